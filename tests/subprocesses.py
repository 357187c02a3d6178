"""What a test needs when it runs the harness, or a daemon, in a process of its own: that process's environment,
a free port for a daemon, and the clean-up of the process group it started."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def harness_env(uri: str, data_dir: Path | None, **more: str) -> dict[str, str]:
    """This process's environment for a harness process: the tracking ``uri``, this checkout's harness first on
    PYTHONPATH (as the tests import it), the corpora's folder when there is one, and ``more``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, **more}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if data_dir:
        env["HARNESS_DATA_DIR"] = str(data_dir)
    return env


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signal what is left of a process group a test started; a group already empty is fine.

    A group whose members have all exited and been reaped no longer exists, and ``os.killpg`` then raises
    ProcessLookupError. Whether the last members are reaped at once depends on the machine's init (CI's reaps
    orphans at once; a container's may leave them zombies, which still count as members), so clean-up must not
    rely on either.
    """
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
