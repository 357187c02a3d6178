"""What a person meets in the MLflow UI: short distinct run names, and the runs page in a real browser.

The browser test serves a real store with ``mlflow ui`` and opens it in headless system Chromium; it skips,
saying why, where chromium or playwright (``make install-ui``) is missing. What it cannot see without a
browser (names, metric prefixes, datasets, tags, the samples table) is checked through MlflowClient in
tests/test_sweep.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, PROJECT_ROOT, shrink_args
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.tracking.claims import SWEEP_TAG
from harness.tracking.naming import DISTINCT_CHARS, run_names


def names_of(spec_text: str, tmp_path: Path, **overrides) -> dict[str, str]:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text, encoding="utf-8")
    variants = expand(load_spec(path), overrides)
    return run_names({v.id: v.axes for v in variants})


def assert_distinct_early(names: dict[str, str]) -> None:
    heads = [name[:DISTINCT_CHARS] for name in names.values()]
    assert len(set(heads)) == len(heads), sorted(names.values())


def test_seed_grid_names_are_the_varying_values_only():
    variants = expand(load_spec(EXPERIMENTS / "seed.yaml"))
    names = run_names({v.id: v.axes for v in variants})
    assert names["kind=ffn,batch_size=128,dataset=korean-chatbot"] == "ffn b128 korean"
    assert names["kind=bigram,batch_size=32,dataset=tinyshakespeare"] == "bigram b32 shakespeare"
    assert_distinct_early(names)


def test_seeds_make_names_cut_their_words_to_stay_apart_within_20_characters(tmp_path):
    spec = (
        "name: s\nbase:\n  train: {steps: 5}\ngrid:\n  model.kind: [bigram, ffn]\n  train.batch_size: [32, 128]\n"
        "  data.dataset: [tinyshakespeare, korean-chatbot]\nseeds: [1337, 1338]\n"
    )
    names = names_of(spec, tmp_path)
    assert len(names) == 16
    assert_distinct_early(names)
    assert names["kind=ffn,batch_size=128,dataset=korean-chatbot,seed=1338"] == "ffn b128 kor s1338"


def test_an_overridden_axis_leaves_the_names(tmp_path):
    names = names_of(
        "name: s\nbase:\n  data: {dataset: tinyshakespeare}\ngrid:\n  model.kind: [bigram, ffn]\n"
        "  train.lr: [1.0e-3, 3.0e-4]\n",
        tmp_path,
        **{"model.kind": "ffn"},
    )
    assert sorted(names.values()) == ["lr0.0003", "lr0.001"]


def test_named_levels_appear_by_name_and_stay_apart_with_seeds():
    levels = ("bigram", "one-head", "four-heads", "full-gpt")  # issue 10's rung axis: a level name per value
    axes = {
        f"{level},{dataset},{seed}": {"rung": level, "data.dataset": dataset, "train.seed": seed}
        for level in levels
        for dataset in ("tinyshakespeare", "korean-chatbot")
        for seed in (1337, 1338)
    }
    names = run_names(axes)
    assert_distinct_early(names)
    assert names["one-head,korean-chatbot,1337"].startswith("one-head ")


def test_make_builds_its_own_venv_unless_one_is_active():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    ours = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "TESTS", "TEST_WORKERS", "EXTRAS", "TEST_EXTRAS", "VENV")
    ours += ("MAKEOVERRIDES",)
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("MAKE")}  # also under make test

    def dry_run(*args, **more_env) -> list[str]:
        done = subprocess.run(
            ["make", "-n", "--no-print-directory", "test", *args],
            cwd=PROJECT_ROOT,
            env={**env, **more_env},
            capture_output=True,
            text=True,
            check=True,
        )
        return [line.strip() for line in done.stdout.splitlines()]

    fresh = dry_run("VENV=.no-such-venv")
    text = "\n".join(fresh)
    assert "-m venv .no-such-venv" in text
    # torch first, then the harness with what the tests need (Ray, playwright, mkdocs, psycopg2, submitit)
    assert text.index("torch==2.13.0") < text.index('install -e ".[dev,ray,ui,docs,server,slurm]"')
    assert fresh[-1] == ".no-such-venv/bin/python -m pytest -q -n auto"
    cpu_only = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"  # a TORCH=... of one's own
    assert f"pip install {cpu_only}" in "\n".join(dry_run("VENV=.no-such-venv", f"TORCH={cpu_only}"))
    active = dry_run(VIRTUAL_ENV="/opt/some-env")
    assert "pip install" not in "\n".join(active) and active[-1] == "/opt/some-env/bin/python -m pytest -q -n auto"


@pytest.mark.slow
def test_runs_page_in_chromium_shows_every_child_run_by_name(mlflow_store, data_dir, tmp_path):
    from harness.ui_shots import UIShotsError, browser_page, check_client, find_chromium, open_runs_table, serve

    try:
        check_client()
        find_chromium()
    except UIShotsError as exc:
        pytest.skip(str(exc))
    smoke = str(EXPERIMENTS / "smoke.yaml")
    args = shrink_args(**{"train.steps": 20, "sample.max_new_tokens": 10})
    assert (
        main(["run", smoke, *args, "--data-dir", str(data_dir), "--results-dir", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get(SWEEP_TAG) == "true")
    children = [r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 8
    with serve(mlflow_store, log_path=tmp_path / "mlflow-ui.log") as base, browser_page() as page:
        open_runs_table(page, base, experiment.experiment_id, parent.info.run_name)
        for name in children:
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        cells = page.locator('[role=gridcell][col-id="attributes.`Run Name`"]').all_inner_texts()
    shown = {cell.strip().splitlines()[-1] for cell in cells if cell.strip()}  # a cell: the run's colour, then its name
    assert set(children) <= shown
