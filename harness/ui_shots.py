"""``make ui-shots``: a short sweep, served by ``mlflow ui`` and photographed in a real browser.

What a person sees in MLflow is checked where it happens, in Chromium: SPEC (default the seed grid) runs
at 300 CPU steps into a temporary SQLite store, ``mlflow ui`` serves it on a free 127.0.0.1 port, and
playwright drives the system's headless Chromium (no browser download) to save in ``results/ui/``:

- ``runs.png``: the runs table, the sweep's parent run expanded, every child under its short name;
- ``charts.png``: the chart view, the curves' sections first, the summaries' bars in their own section;
- ``compare.png``: the artifact view of 4 runs, their samples side by side;
- ``compare-runs.png``: MLflow's compare page of the same 4 runs (params that differ highlighted);
- ``run.png``: one child run (description, datasets, source, params, metrics).

Needs ``make install-ui`` (playwright) and Debian's ``chromium`` (``apt-get install chromium``; add
``fonts-noto-cjk`` for the Korean samples to show as text rather than boxes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from harness.tracking.store import runs_url

STEPS = 300
VIEWPORT = {"width": 1600, "height": 1000}
LOAD_TIMEOUT_MS = 120_000  # a first page on a busy 2-core machine takes tens of seconds
SERVER_TIMEOUT_S = 240.0


class UIShotsError(Exception):
    """Something ui-shots needs is missing; the message says what to install."""


def find_chromium() -> str:
    """The system Chromium: ``$CHROMIUM``, else ``chromium`` or ``chromium-browser`` on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        path = candidate and shutil.which(candidate)
        if path:
            return path
    raise UIShotsError(
        "no chromium found (set CHROMIUM=/path/to/chromium, or on Debian/Ubuntu: apt-get install chromium)"
    )


def check_client() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise UIShotsError(f"the browser client is missing ({exc}): make install-ui") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(store_uri: str, port: int | None = None, log_path: Path | None = None):
    """``mlflow ui`` on ``store_uri`` at 127.0.0.1 (a free port); yields its base URL, stops it after."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise UIShotsError(
                    f"mlflow ui exited with code {server.returncode}" + (f"; see {log_path}" if log_path else "")
                )
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise UIShotsError(f"mlflow ui did not answer on {base} within {SERVER_TIMEOUT_S:.0f} s")
            time.sleep(1.0)
        yield base
    finally:  # the whole group: mlflow ui runs the server in a child process (uvicorn)
        _signal_group(server, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(server, signal.SIGKILL)
            server.wait()
        if log_path:
            log.close()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def browser_page(viewport: dict | None = None):
    """A page of headless system Chromium driven by playwright."""
    check_client()
    chromium = find_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses its sandbox as root (containers, CI).
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=viewport or VIEWPORT)
            page.set_default_timeout(LOAD_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def open_runs_table(page, base: str, experiment_id: str, parent_name: str) -> None:
    """The experiment's runs table with the assistant panel closed and the parent run expanded."""
    page.goto(runs_url(base, experiment_id))
    page.get_by_text(parent_name, exact=True).first.wait_for()
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    row = page.locator("[role=row]").filter(has_text=parent_name).first
    expander = row.locator("button").first
    if expander.count():
        expander.click()
    page.wait_for_timeout(1000)


def widen_name_column(page, pixels: int = 90) -> None:
    """Drag the Run Name column wider, so that whole names show (the grid cuts them at ~15 characters)."""
    header = page.locator('[role=columnheader][col-id="attributes.`Run Name`"]').first
    box = header.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2  # the resize handle at its right edge
    page.mouse.move(x - 20, y)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + pixels, y, steps=10)
    page.mouse.up()
    page.wait_for_timeout(500)


def view_mode(page, mode: str) -> None:
    """Switch the runs page between TABLE, CHART and ARTIFACT (the row of three icons)."""
    page.locator(f"label:has(input[name=runs-view-mode][value={mode}])").click()
    page.wait_for_timeout(1500)


def hide_runs(page, names: list[str]) -> None:
    """Hide runs from the charts and artifact view with their eye toggles (in the runs list at the left)."""
    for name in names:
        row = page.locator("[role=row]").filter(has_text=name).first
        row.locator("label:has(input.is-visibility-toggle-checkbox)").first.click()
        page.wait_for_timeout(300)


def run_sweep(spec: Path, store: Path, steps: int, overrides: list[str], data_dir: str | None, jobs: int) -> None:
    """``harness run SPEC`` at ``steps`` CPU steps into the SQLite store in ``store``."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        # short runs: sample CPU/memory every second, so that the run page's system metrics are not empty
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1"),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    command = [
        sys.executable,
        "-m",
        "harness",
        "run",
        str(spec.resolve()),
        f"train.steps={steps}",
        "train.eval_interval=null",
        "train.device=cpu",
        *overrides,
        "--results-dir",
        str(store / "results"),
        "--checkpoint-dir",
        str(store / "checkpoints"),
        "--jobs",
        str(jobs),
        "--no-progress",
    ]
    if data_dir:
        command += ["--data-dir", data_dir]
    print("ui-shots:", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, cwd=store, env=env)
    if done.returncode not in (0, 1):  # 1: some variant failed, still worth a look
        raise UIShotsError(f"the sweep exited with code {done.returncode}")


def take_shots(base: str, store_uri: str, experiment_name: str, out: Path) -> list[Path]:
    """The screenshots of one experiment's sweep; returns their paths."""
    from mlflow.tracking import MlflowClient

    from harness.tracking.claims import SWEEP_TAG

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UIShotsError(f"no experiment {experiment_name!r} in {store_uri}")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get(SWEEP_TAG) == "true"]
    if not parents:
        raise UIShotsError(f"experiment {experiment_name!r} has no sweep (parent) run")
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    out.mkdir(parents=True, exist_ok=True)
    shots = []

    def save(page, name: str) -> None:
        path = out / name
        page.screenshot(path=str(path))
        shots.append(path)
        print(f"ui-shots: wrote {path}", flush=True)

    # 4 runs that differ in more than one axis: the first child of each of the first 4 distinct axis-value tuples
    four = _pick_four(children)
    ml = "workflowType=machine_learning"  # pages opened by address, not by a click, would open in GenAI mode
    with browser_page() as page:
        open_runs_table(page, base, experiment.experiment_id, parent.info.run_name)
        widen_name_column(page)
        page.mouse.move(5, 5)  # no tooltip over the table
        page.wait_for_timeout(3000)
        save(page, "runs.png")

        page.set_viewport_size({"width": VIEWPORT["width"], "height": 2000})
        view_mode(page, "CHART")
        page.get_by_text("loss/val", exact=True).first.wait_for()
        page.wait_for_timeout(5000)  # the charts draw after their data arrives
        save(page, "charts.png")

        page.set_viewport_size({"width": 2200, "height": VIEWPORT["height"]})  # 4 runs' samples abreast
        view_mode(page, "ARTIFACT")
        hide_runs(page, [parent.info.run_name] + [r.info.run_name for r in children if r not in four])
        page.wait_for_timeout(5000)
        save(page, "compare.png")

        ids = json.dumps([r.info.run_id for r in four])
        page.set_viewport_size({"width": VIEWPORT["width"], "height": 1800})
        page.goto(
            f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}"
            f"&experiments={urllib.parse.quote(json.dumps([experiment.experiment_id]))}&{ml}"
        )
        page.get_by_text(four[0].info.run_name).first.wait_for()
        visualizations = page.get_by_text("Visualizations", exact=True)
        if visualizations.count():  # collapsed: the params and metrics tables are what compare is for
            visualizations.first.click()
        diff_only = page.get_by_text("Show diff only", exact=True)
        if diff_only.count():  # the params that differ: the variants' axes
            diff_only.first.click()
        page.wait_for_timeout(3000)
        save(page, "compare-runs.png")

        one = four[0]
        page.set_viewport_size({"width": VIEWPORT["width"], "height": 1400})
        page.goto(f"{base}/#/experiments/{experiment.experiment_id}/runs/{one.info.run_id}?{ml}")
        page.get_by_text(one.info.run_name).first.wait_for()
        page.wait_for_timeout(4000)
        save(page, "run.png")
    return shots


def _pick_four(children: list) -> list:
    """4 runs spread over the grid: each next one brings the most name tokens (axis values) not yet shown."""
    left = sorted(children, key=lambda r: r.info.run_name)
    picked, seen = [], set()
    while left and len(picked) < 4:
        best = max(left, key=lambda r: len(set(r.info.run_name.split()) - seen))
        picked.append(best)
        seen |= set(best.info.run_name.split())
        left.remove(best)
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.ui_shots", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides for the sweep")
    parser.add_argument("--spec", type=Path, default=Path("experiments/seed.yaml"))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/ui"))
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="a folder to keep the store in; reused (no new sweep) when it already holds the experiment",
    )
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    try:
        check_client()
        find_chromium()
        from harness.spec.parsing import load_spec

        name = load_spec(args.spec).name
        with contextlib.ExitStack() as stack:
            store = args.store or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ui-shots-")))
            store = store.resolve()
            store.mkdir(parents=True, exist_ok=True)
            store_uri = f"sqlite:///{store / 'mlflow.db'}"
            if not _has_experiment(store_uri, name):
                run_sweep(args.spec, store, args.steps, args.overrides, args.data_dir, args.jobs)
            base = stack.enter_context(serve(store_uri, log_path=store / "mlflow-ui.log"))
            print(f"ui-shots: mlflow ui on {base}", flush=True)
            take_shots(base, store_uri, name, args.out)
    except UIShotsError as exc:
        print(f"ui-shots: {exc}", file=sys.stderr)
        return 2
    return 0


def _has_experiment(store_uri: str, name: str) -> bool:
    from mlflow.tracking import MlflowClient

    if not Path(store_uri[len("sqlite:///") :]).exists():
        return False
    return MlflowClient(store_uri).get_experiment_by_name(name) is not None


if __name__ == "__main__":
    sys.exit(main())
