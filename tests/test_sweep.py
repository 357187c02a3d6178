"""A smoke sweep end to end: spec -> 8 variants -> a real SQLite MLflow store -> runs.csv.

The store is also read as the MLflow UI reads it (REST-level, through MlflowClient): run names, metric
sections, datasets, MLflow's own tags, system metrics and the samples table.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import EXPERIMENTS, shrink_args
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.data.corpora import CATALOG
from harness.metrics import CURVES, FINALS, SUMMARY_STEP, mlflow_key
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.tracking.naming import DISTINCT_CHARS, run_names
from harness.tracking.recorded import wrap
from harness.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PARENT_TAG, SAMPLES_TABLE

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
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # a few samples even in a 1-second run
        patch.chdir(root)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(
                [
                    "run",
                    SMOKE,
                    *shrink_args(),
                    "--data-dir",
                    str(data_dir),
                    "--results-dir",
                    str(results),
                    "--no-progress",
                ]
            )
        assert code == 0, printed.getvalue()
        client = MlflowClient(uri)
        yield client, client.get_experiment_by_name("smoke").experiment_id, results, printed.getvalue()


@pytest.fixture
def in_sweep_store(smoke_sweep, monkeypatch):
    """Later commands of a test talk to the module sweep's store."""
    client = smoke_sweep[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    return smoke_sweep


def children_of(client, experiment_id):
    return [r for r in client.search_runs([experiment_id]) if PARENT_TAG in r.data.tags]


def test_smoke_sweep_logs_every_variant_as_a_closed_child_run(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    runs = client.search_runs([experiment_id])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 8
    assert {r.data.tags[PARENT_TAG] for r in children} == {parents[0].info.run_id}
    for run in children:
        assert run.info.status == "FINISHED"
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        assert params["model.kind"] in ("bigram", "ffn") and params["train.steps"] == "40"
        assert params["data.dataset"] in ("tinyshakespeare", "korean-chatbot")
        for tag in ("variant", "config_hash", "git_commit", "device", "torch_version"):
            assert tags[tag]
        for metric in (
            "final_train_loss",
            "final_val_loss",
            "train_time_s",
            "tokens_per_s",
            "bigram_floor",
            "excess_loss",
        ):
            assert mlflow_key(metric) in metrics
        history = client.get_metric_history(run.info.run_id, "loss/train")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 10, 20, 30, 40]
        assert len(client.get_metric_history(run.info.run_id, "loss/val")) == 5
        assert len(client.get_metric_history(run.info.run_id, "loss/batch")) == 40
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "samples", SAMPLES_TABLE} <= artifacts
        samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
        assert samples == {"samples/before.txt", "samples/after.txt"}


def test_run_names_are_short_distinct_early_and_the_full_id_stays_in_a_tag(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    children = children_of(client, experiment_id)
    variants = expand(load_spec(SMOKE))
    assert {r.data.tags["variant"]: r.info.run_name for r in children} == run_names({v.id: v.axes for v in variants})
    heads = {r.info.run_name[:DISTINCT_CHARS] for r in children}
    assert len(heads) == 8
    assert "ffn b128 korean" in {r.info.run_name for r in children}


def test_metrics_fall_in_sections_curves_before_summaries(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    for run in children_of(client, experiment_id):
        keys = set(run.data.metrics)
        sections = {key.split("/")[0] for key in keys}
        assert sections <= {"loss", "opt", "summary", "system"}, sections
        assert "loss" < "opt" < "summary"  # MLflow orders sections by name: the curves come first
        assert {mlflow_key(k) for k in FINALS if mlflow_key(k) in keys} >= {"summary/val_loss", "summary/train_loss"}
        # summaries sit at step 0, as MLflow's single-value metrics do: the chart view draws them as bars
        assert {m.step for m in client.get_metric_history(run.info.run_id, "summary/val_loss")} == {SUMMARY_STEP}
        assert not any(key in keys for key in (*CURVES, *FINALS))  # no flat trainer key leaks into MLflow


def test_system_metrics_go_on_every_child_run(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    for run in children_of(client, experiment_id):
        keys = set(run.data.metrics)
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, run.info.run_name


def test_corpora_are_mlflow_datasets_with_their_sha256(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    for run in children_of(client, experiment_id):
        dataset = run.data.params["data.dataset"]
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {f"{dataset}/train", f"{dataset}/val"}
        for context in ("train", "val"):
            entry = inputs[f"{dataset}/{context}"]
            assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", context)]
            assert entry.dataset.digest == CATALOG[dataset].sha256[:36]
            assert json.loads(entry.dataset.profile)["sha256"] == CATALOG[dataset].sha256
            assert CATALOG[dataset].url in entry.dataset.source


def test_mlflow_conventions_source_note_and_experiment_kind(smoke_sweep):
    client, experiment_id, _, _ = smoke_sweep
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    for run in children_of(client, experiment_id):
        tags = run.data.tags
        assert tags["identity_version"] == "2"
        assert tags["mlflow.source.name"].endswith("harness") and tags["mlflow.source.type"] == "LOCAL"
        if tags["git_commit"] != "unknown":
            assert tags["git_commit"].startswith(tags["mlflow.source.git.commit"])
        assert tags["variant"] in tags["mlflow.note.content"] and run.info.run_name in tags["mlflow.note.content"]


def test_samples_table_has_one_row_per_run_and_the_text_files_are_wrapped(smoke_sweep, tmp_path):
    client, experiment_id, _, _ = smoke_sweep
    for run in children_of(client, experiment_id):
        run_id = run.info.run_id
        table = json.load(open(client.download_artifacts(run_id, SAMPLES_TABLE, str(tmp_path)), encoding="utf-8"))
        rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        assert table["columns"] == ["prompt", "after", "before", "variant"] and len(rows) == 1
        assert rows[0]["variant"] == run.data.tags["variant"] and rows[0]["prompt"] == " "
        for name in ("before", "after"):
            text = open(
                client.download_artifacts(run_id, f"samples/{name}.txt", str(tmp_path)), encoding="utf-8"
            ).read()
            assert text == wrap(rows[0][name])


def test_wrap_keeps_the_models_newlines_and_cuts_long_lines():
    text = "x" * 250 + "\n\nshort line\n" + "word " * 30
    wrapped = wrap(text, 100)
    assert all(len(line) <= 100 for line in wrapped.split("\n"))
    assert wrapped.split("\n")[:5] == ["x" * 100, "x" * 100, "x" * 50, "", "short line"]
    assert wrapped.split() == text.split() or "".join(wrapped.split()) == "".join(text.split())
    assert wrap("a line  \n  ", 100) == "a line  \n  "  # short lines stay exactly as sampled


def test_samples_and_config_artifacts_are_readable(smoke_sweep, tmp_path):
    client, experiment_id, _, _ = smoke_sweep
    korean = [r for r in client.search_runs([experiment_id]) if r.data.params.get("data.dataset") == "korean-chatbot"][
        0
    ]
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
    for column in (
        "variant",
        "status",
        "model.kind",
        "train.batch_size",
        "data.dataset",
        "final_train_loss",
        "final_val_loss",
        "train_time_s",
        "tokens_per_s",
        "run_id",
    ):
        assert column in table.columns
    assert (table["status"] == "FINISHED").all()
    assert set(table["train.batch_size"]) == {32, 128}
    assert table["final_val_loss"].notna().all()
    for row in table.itertuples():
        assert client.get_run(row.run_id).data.metrics["summary/val_loss"] == pytest.approx(row.final_val_loss)
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
    code = main(
        ["run", SMOKE, *shrink_args(), "--data-dir", str(data_dir), "--results-dir", str(results), "--no-progress"]
    )
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
        "grid:\n  train.lr: [1.0e-3, 1.0e+6]\n",
        encoding="utf-8",
    )
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


def test_overrides_may_come_after_options(capsys, data_dir):
    """`harness validate SPEC --seeds 1 2 train.steps=10`: argparse alone would read the override as a seed."""
    data = ["--data-dir", str(data_dir)] if data_dir else []
    assert main(["validate", str(EXPERIMENTS / "smoke.yaml"), "--seeds", "1", "2", "train.steps=10", *data]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if " hash=" in line]
    assert len(listed) == 16 and all(" steps=10 " in line for line in listed)
    assert {line.split(",seed=")[1].split()[0] for line in listed} == {"1", "2"}
