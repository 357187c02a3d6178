"""The README's quick start, command by command, in a scratch copy of the project: the README cannot drift from it.

Each command runs as a user types it, through make, with two changes that keep CI cheap: `make smoke` and `make
ablations` train 5 steps instead of 30, 500 or 50,000 (`ARGS=train.steps=5`: the same grids, the same code path;
the steps are most of a smoke run's time, the Korean FFN's above all), and `make ui` is stopped once it answers.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from subprocesses import free_port, kill_group

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHRUNK_STEPS = 5


def quick_start() -> list[str]:
    """The commands of the first bash block under '## Quick start', without their comments."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_readme_is_short_and_its_links_resolve():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "no links found"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing
    assert quick_start()[:2] == ["make smoke", "make ablations ARGS=train.steps=500"]  # the first look first
    assert "docs/ko/" in text.split("\n## ", 1)[0]  # the Korean quick start, linked from the first screen


def _shrunk(command: str) -> list[str]:
    words = shlex.split(command)
    assert words[0] == "make", f"the quick start's {command!r} is not a make command: teach this test to run it"
    if words[1] in ("smoke", "ablations"):
        words = [w for w in words if not w.startswith("ARGS=")] + [f"ARGS=train.steps={SHRUNK_STEPS}"]
    return words


def _env(project: Path, data_dir: Path) -> dict[str, str]:
    drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "CONDA_PREFIX", "EXTRAS", "TEST_EXTRAS", "SPEC", "JOBS", "ARGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        VIRTUAL_ENV=sys.prefix,  # this env, as an activated one: make installs nothing
        PYTHONPATH=str(ROOT),  # this checkout's harness, run from the scratch copy
        HARNESS_DATA_DIR=str(data_dir),
        PORT=str(free_port()),
    )
    env.pop("MLFLOW_TRACKING_URI", None)  # the default: mlflow.db in the folder make runs from
    return env


def _serve_until_it_answers(words: list[str], project: Path, env: dict[str, str]) -> str:
    """`make ui`: wait for the printed address and for the UI to answer there, then stop it (its whole group)."""
    log = project / "ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            words, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{env['PORT']}/", timeout=2) as page:
                    if page.status == 200:
                        return log.read_text()
            except OSError:
                time.sleep(1)
        raise AssertionError(f"make ui did not answer in 120 s:\n{log.read_text()}")
    finally:
        kill_group(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(server.pid)
            server.wait()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_every_quick_start_command_runs(tmp_path, data_dir):
    project = tmp_path / "project"
    project.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "experiments", project / "experiments")
    env = _env(project, data_dir)
    commands = quick_start()
    assert len(commands) >= 3, commands
    for command in commands:
        words = _shrunk(command)
        if words[1] == "ui":
            out = _serve_until_it_answers(words, project, env)
            assert f"runs of experiments/seed.yaml: http://127.0.0.1:{env['PORT']}/#/experiments/" in out, out
            continue
        done = subprocess.run(words, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}: {out}"
        assert "failed 0" in out, out
        assert "\r" not in out, f"{command}: progress bars in a log"  # output is not a terminal here
        if words[1] == "smoke":
            assert "finished 8, skipped 0, failed 0" in out and "wrote results/smoke/" in out, out
        else:  # both ablations commands, shrunk to the same grid: the second finds every variant FINISHED
            assert "wrote results/seed-ablations/overrides-" in out, out
    assert (project / "results" / "seed-ablations").is_dir() and (project / "mlflow.db").is_file()
