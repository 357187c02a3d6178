"""Progress bars draw on a terminal and stay out of a log: `harness run` with its output piped writes no bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = """name: bars
base:
  data: {dataset: tinyshakespeare}
  model: {kind: bigram}
  train: {steps: 300, batch_size: 8, context_length: 8, eval_interval: 100, device: cpu}
  sample: {max_new_tokens: 5}
"""


def _run(tmp_path: Path, data_dir: Path, stderr) -> subprocess.CompletedProcess:
    spec = tmp_path / "bars.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    env.pop("TERM", None) if stderr is subprocess.PIPE else env.setdefault("TERM", "xterm")
    return subprocess.run(
        [sys.executable, "-m", "harness", "run", str(spec), "--data-dir", str(data_dir), "--force"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_bars_on_a_terminal_and_none_in_a_pipe(tmp_path, data_dir):
    piped = _run(tmp_path, data_dir, subprocess.PIPE)
    assert piped.returncode == 0, piped.stdout + piped.stderr
    log = piped.stdout + piped.stderr
    assert "\r" not in log and "step/s" not in log and "variant/s" not in log, log  # no bar, not even its last frame
    assert "[1/1] done base\n" in log  # instead of a bar, a line per variant as it ends
    assert "finished 1, skipped 0, failed 0" in log

    leader, follower = pty.openpty()  # stderr a terminal of 100 columns, as in an interactive shell
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    drawn = bytearray()

    def read_terminal() -> None:  # drained while the run draws, so that it never waits on a full terminal
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all is read
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        shown = _run(tmp_path, data_dir, follower)
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    assert shown.returncode == 0, shown.stdout
    assert b"\r" in drawn and b"/300" in drawn, bytes(drawn[-2000:])  # the variant's bar, counting its 300 steps
    assert b"[1/1] done" not in drawn  # the bar said it
