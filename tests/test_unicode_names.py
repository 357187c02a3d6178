"""A spec named in Korean, with Korean level names, end to end (issue 26): the MLflow experiment, the run names
and variant tags, results/<name>/ and its report, all under the names as written."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.data.corpora import DataConfig, DataError, load_corpus
from harness.tracking.store import PARENT_TAG

NAME = "한국어-실험"
SPEC = """\
name: 한국어-실험
description: 모델 크기 비교
base:
  data: {dataset: korean-chatbot}
  model: {kind: ffn}
  train: {steps: 10, batch_size: 8, context_length: 8, eval_interval: 5, device: cpu}
  sample: {max_new_tokens: 8}
grid:
  size:
    작은: {model.hidden_sizes: [8]}
    큰: {model.hidden_sizes: [16, 8]}
"""


@pytest.fixture
def korean_dir(data_dir):
    try:
        load_corpus(DataConfig(dataset="korean-chatbot"), data_dir)
    except DataError as exc:
        pytest.skip(f"korean-chatbot not available (set HARNESS_DATA_DIR): {exc}")
    return data_dir


@pytest.mark.slow  # two 10-step FFN runs on the Korean corpus, a real SQLite store and a report: ~10-16 s here
def test_a_korean_named_spec_runs_end_to_end(tmp_path, mlflow_store, korean_dir, capsys):
    spec = tmp_path / "실험.yaml"
    spec.write_text(textwrap.dedent(SPEC), encoding="utf-8")
    results = tmp_path / "results"
    code = main(["run", str(spec), "--data-dir", str(korean_dir), "--results-dir", str(results), "--no-progress"])
    assert code == 0, capsys.readouterr().err

    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None and experiment.name == NAME
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert sorted(r.data.tags["variant"] for r in children) == ["size=작은", "size=큰"]
    assert sorted(r.info.run_name for r in children) == ["작은", "큰"]
    assert {r.info.status for r in runs} == {"FINISHED"}

    folder = results / NAME
    assert folder.is_dir()
    table = pd.read_csv(folder / "runs.csv")
    assert sorted(table["size"]) == ["작은", "큰"] and table["final_val_loss"].notna().all()
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert report.startswith(f"# {NAME}: sweep report")
    assert "작은" in report and "큰" in report

    # rebuilt from MLflow alone, under the same folder
    (folder / "report.md").unlink()
    assert main(["report", str(spec), "--results-dir", str(results)]) == 0
    assert (folder / "report.md").read_text(encoding="utf-8").startswith(f"# {NAME}: sweep report")
