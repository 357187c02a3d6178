"""A smoke sweep end to end: spec -> 8 variants -> a real SQLite MLflow store -> runs.csv."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.tracking import PARENT_TAG

from conftest import EXPERIMENTS, shrink_args

SMOKE = str(EXPERIMENTS / "smoke.yaml")


@pytest.fixture(scope="module")
def smoke_sweep(data_dir, tmp_path_factory):
    """Run the smoke spec once per module; return (client, experiment id, results dir, printed output)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("smoke")
    results = root / "results"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["run", SMOKE, *shrink_args(), "--data-dir", str(data_dir), "--results-dir", str(results), "--no-progress"])
        assert code == 0, printed.getvalue()
        client = MlflowClient(uri)
        yield client, client.get_experiment_by_name("smoke").experiment_id, results, printed.getvalue()


@pytest.fixture
def in_sweep_store(smoke_sweep, monkeypatch):
    """Later commands of a test talk to the module sweep's store."""
    client = smoke_sweep[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    return smoke_sweep


def test_smoke_sweep_logs_every_variant_as_a_closed_child_run(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8
    assert {r.data.tags[PARENT_TAG] for r in children} == {parents[0].info.run_id}
    assert {r.info.run_name for r in children} == {r.data.tags["variant"] for r in children}
    for run in children:
        assert run.info.status == "FINISHED"
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        assert params["model.kind"] in ("bigram", "ffn") and params["train.steps"] == "40"
        assert params["data.dataset"] in ("tinyshakespeare", "korean-chatbot")
        for tag in ("variant", "config_hash", "git_commit", "device", "torch_version"):
            assert tags[tag]
        for metric in ("final_train_loss", "final_val_loss", "train_time_s", "tokens_per_s", "bigram_floor", "excess_loss"):
            assert metric in metrics
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 10, 20, 30, 40]
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 5
        assert len(client.get_metric_history(run.info.run_id, "batch_loss")) == 40
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "samples"} <= artifacts
        samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert samples == {"samples/before.txt", "samples/after.txt"}


def test_samples_and_config_artifacts_are_readable(smoke_sweep, tmp_path):
    client, experiment_id, _, _ = smoke_sweep
    korean = [r for r in client.search_runs([experiment_id]) if r.data.params.get("data.dataset") == "korean-chatbot"][0]
    run_id = korean.info.run_id
    after = open(client.download_artifacts(run_id, "samples/after.txt", str(tmp_path)), encoding="utf-8").read()
    assert after.startswith(" ") and len(after) == 21
    config = open(client.download_artifacts(run_id, "config.yaml", str(tmp_path)), encoding="utf-8").read()
    assert "dataset: korean-chatbot" in config and "steps: 40" in config


def test_runs_csv_has_one_row_per_variant_and_the_axes(smoke_sweep):
    client, _, results, out = smoke_sweep
    (folder,) = (results / "smoke").glob("overrides-*")  # a run with overrides reports beside the spec's own
    table = pd.read_csv(folder / "runs.csv")
    assert len(table) == 8
    for column in ("variant", "status", "model.kind", "train.batch_size", "data.dataset", "final_train_loss",
                   "final_val_loss", "train_time_s", "tokens_per_s", "run_id"):
        assert column in table.columns
    assert (table["status"] == "FINISHED").all()
    assert set(table["train.batch_size"]) == {32, 128}
    assert table["final_val_loss"].notna().all()
    for row in table.itertuples():
        assert client.get_run(row.run_id).data.metrics["final_val_loss"] == pytest.approx(row.final_val_loss)
    assert "wrote" in out and "final_train_loss" in out


def test_report_rebuilds_runs_csv_from_mlflow_alone(in_sweep_store, capsys):
    _, _, results, _ = in_sweep_store
    (folder,) = (results / "smoke").glob("overrides-*")  # a run with overrides reports beside the spec's own
    path = folder / "runs.csv"
    before = pd.read_csv(path)
    path.unlink()
    assert main(["report", SMOKE, "--results-dir", str(results)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(path), before)


def test_rerun_skips_finished_variants(in_sweep_store, data_dir, capsys):
    client, experiment_id, results, _ = in_sweep_store
    code = main(["run", SMOKE, *shrink_args(), "--data-dir", str(data_dir), "--results-dir", str(results), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("skip ") == 8 and "finished 0, skipped 8, failed 0" in out
    children = [r for r in client.search_runs([experiment_id]) if PARENT_TAG in r.data.tags]
    assert len(children) == 8


def test_a_diverging_variant_fails_with_its_reason_and_the_others_finish(mlflow_store, data_dir, tmp_path, capsys):
    spec = tmp_path / "lr.yaml"
    spec.write_text(
        "# lr ablation. Run: harness run lr.yaml\n"
        "name: lr\nbase:\n  data: {dataset: tinyshakespeare}\n  model: {kind: ffn}\n"
        "  train: {steps: 60, eval_interval: 10, device: cpu}\n  sample: {max_new_tokens: 5}\n"
        "grid:\n  train.lr: [1.0e-3, 1.0e+6]\n", encoding="utf-8")
    code = main(["run", str(spec), "--data-dir", str(data_dir), "--results-dir", str(tmp_path / "r"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "FAILED lr=1000000.0: DivergedError" in captured.err
    table = pd.read_csv(tmp_path / "r" / "lr" / "runs.csv")
    assert list(table["status"]) == ["FINISHED", "FAILED"]
    client = MlflowClient(mlflow_store)
    failed = client.get_run(table["run_id"][1])
    assert "became nan" in failed.data.tags["error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert client.get_run(table["run_id"][0]).info.status == "FINISHED"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_spec_exits_2_before_anything_trains(mlflow_store, tmp_path, capsys, command):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nbase:\n  train: {batch_sise: 3}\n", encoding="utf-8")
    assert main([command, str(spec)]) == 2
    err = capsys.readouterr().err
    assert "train.batch_sise" in err and "did you mean 'batch_size'" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists()


def test_validate_lists_the_variants(data_dir, capsys):
    assert main(["validate", str(EXPERIMENTS / "seed.yaml"), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "8 variant(s)" in out and "kind=ffn,batch_size=128,dataset=korean-chatbot" in out


def test_context_length_not_smaller_than_the_split_is_caught(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("hello world " * 20, encoding="utf-8")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\nbase:\n  data: {{path: {text}}}\n  train: {{context_length: 64}}\n", encoding="utf-8")
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "train.context_length 64 must be smaller than the shortest split" in err
