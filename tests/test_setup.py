"""The set-up the Makefile does: which torch it installs where, and that one install serves every target after it.

Nothing is downloaded: make runs with -n (print, do not run) or with a stand-in interpreter that records its calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "--no-deps --extra-index-url https://download.pytorch.org/whl/cpu"  # its deps come with the harness

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _env(path_first: Path | None = None) -> dict[str, str]:
    """The environment of a user with no active env: none of the caller's venv, conda env or make flags."""
    drop = ("VIRTUAL_ENV", "CONDA_PREFIX", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PYTHON", "TORCH")
    drop += ("EXTRAS", "TEST_EXTRAS", "SPEC", "JOBS", "ARGS")  # the Makefile's variables (CI exports EXTRAS)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env['PATH']}"
    return env


def _make(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _torch_line(env: dict[str, str]) -> str:
    lines = [line for line in _make(["-n", "install"], ROOT, env).splitlines() if "pip install torch" in line]
    assert len(lines) == 1, lines
    return lines[0].split("pip install ", 1)[1]


def _fake_nvidia_smi(folder: Path, works: bool) -> Path:
    folder.mkdir()
    tool = folder / "nvidia-smi"
    # as the real one: lists the GPUs, or fails when the driver does not answer (a container without a GPU)
    body = 'echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"' if works else "echo 'NVIDIA-SMI has failed' >&2; exit 9"
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(0o755)
    return folder


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="the CPU index is chosen on Linux only")
def test_torch_is_the_cpu_wheel_without_an_nvidia_gpu_and_pypis_cuda_build_with_one(tmp_path):
    assert _torch_line(_env(_fake_nvidia_smi(tmp_path / "gpu", works=True))) == "torch==2.13.0"  # CUDA on Linux
    no_driver = _env(_fake_nvidia_smi(tmp_path / "broken", works=False))
    assert _torch_line(no_driver) == f"torch==2.13.0 {CPU_INDEX}"
    assert f"pip install torch==2.13.0 {CPU_INDEX}" in _make(["help"], ROOT, no_driver)  # make help says so
    if shutil.which("nvidia-smi") is None:  # this machine as it is
        assert _torch_line(_env()) == f"torch==2.13.0 {CPU_INDEX}"
    assert "pip install torch==2.12.0\n" in _make(["-n", "install", "TORCH=torch==2.12.0"], ROOT, no_driver)


def test_make_install_then_the_work_installs_once(tmp_path):
    """`make install` leaves the stamp `make ablations`/`make smoke` look for: the second command installs nothing."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    calls = tmp_path / "calls.txt"
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')  # a stand-in: records each call, succeeds
    python.chmod(0o755)
    env = _env()
    _make(["install"], tmp_path, env)
    installs = calls.read_text().splitlines()
    assert any(c.startswith("-m pip install -e .[dev]") for c in installs), installs
    calls.write_text("")
    _make(["smoke"], tmp_path, env)
    _make(["ablations", "ARGS=train.steps=500"], tmp_path, env)
    work = calls.read_text().splitlines()
    assert work == [
        "-m harness run experiments/smoke.yaml",
        "-m harness run experiments/seed.yaml --jobs 2 train.steps=500",
    ], work
    later = time.time() + 60
    os.utime(tmp_path / "pyproject.toml", (later, later))  # a changed pyproject.toml installs again, once
    calls.write_text("")
    _make(["smoke"], tmp_path, env)
    assert sum("pip install -e" in c for c in calls.read_text().splitlines()) == 1
