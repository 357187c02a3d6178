"""A trained variant is a model: logged to MLflow with its run, read back exactly, sampled by ``harness sample`` and
by MLflow's pyfunc (in a fresh process, and served over HTTP), and the best one registered with the alias champion.

The runs are real and tiny (a few dozen CPU steps on the real corpora) in real SQLite stores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from subprocesses import free_port, harness_env, kill_group

from harness.cli import main
from harness.data.tokenizers import build_tokenizer, tokenizer_from_json
from harness.models import ModelConfig
from harness.models.registry import build_model
from harness.spec.expansion import expand
from harness.spec.parsing import load_spec
from harness.tracking.logged_model import (
    CONFIG_FILE,
    MODEL_NAME,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ModelFileError,
    download_run_model,
    load_language_model,
    load_model_folder,
    load_run_model,
    write_model_files,
)
from harness.tracking.recorded import STACKED_TAG
from harness.tracking.store import SAMPLES_TABLE

MODELS_SPEC = """\
name: models
base:
  data: {dataset: korean-chatbot}
  model: {kind: ffn, hidden_sizes: [32]}
  train: {steps: 30, eval_interval: 15, device: cpu, batch_size: 16, context_length: 8, stack_seeds: true}
  sample: {prompt: "안녕", max_new_tokens: 20}
grid:
  model.kind: [bigram, ffn]
seeds: [1, 2]
"""

TOKENIZERS_SPEC = """\
name: model-tokenizers
base:
  data: {dataset: korean-chatbot}
  model: {kind: bigram}
  train: {steps: 30, eval_interval: 15, device: cpu, batch_size: 16, context_length: 8}
  sample: {prompt: "안녕", max_new_tokens: 30}
zip:
  - data.tokenizer: [jamo, bpe]
    data.vocab_size: [null, 300]
"""

NO_MODEL_SPEC = """\
name: no-model
base:
  data: {dataset: korean-chatbot}
  model: {kind: bigram}
  train: {steps: 10, eval_interval: 10, device: cpu, batch_size: 16, context_length: 8, log_model: false}
"""


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def store(data_dir, tmp_path_factory):
    """The three specs trained into one SQLite store; yields (uri, client, folder, {spec name: spec path})."""
    root = tmp_path_factory.mktemp("models")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    specs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        patch.chdir(root)
        for name, text in (("models", MODELS_SPEC), ("model-tokenizers", TOKENIZERS_SPEC), ("no-model", NO_MODEL_SPEC)):
            path = root / f"{name}.yaml"
            path.write_text(text, encoding="utf-8")
            specs[name] = path
            code, out, err = run_cli(
                "run", str(path), "--data-dir", str(data_dir), "--results-dir", str(root / "results"), "--no-progress"
            )
            assert code == 0, out + err
        yield uri, MlflowClient(uri), root, specs


@pytest.fixture
def in_store(store, monkeypatch):
    uri, _, root, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(root)
    return store


def variant_runs(client: MlflowClient, experiment: str) -> dict[str, object]:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return {r.data.tags["variant"]: r for r in client.search_runs([experiment_id]) if "variant" in r.data.tags}


def logged_sample(client: MlflowClient, run_id: str, tmp_path: Path) -> str:
    """The sample the run logged after training: its row of the samples table."""
    table = json.loads(Path(client.download_artifacts(run_id, SAMPLES_TABLE, str(tmp_path))).read_text("utf-8"))
    return table["data"][0][table["columns"].index("after")]


# -- the files ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, sizes",
    [("bigram", {}), ("ffn", {"hidden_sizes": (16, 8)}), ("gpt", {"n_layer": 1, "n_head": 2, "n_embd": 8})],
)
def test_weights_config_and_tokenizer_round_trip_exactly(tmp_path, kind, sizes):
    torch.manual_seed(0)
    text = "안녕하세요 hello, world\n"
    tokenizer = build_tokenizer("jamo", text, text)
    config = ModelConfig(kind=kind, **sizes)
    model = build_model(config, tokenizer.vocab_size, 8)
    with torch.no_grad():  # weights no initialisation would give: a loader that re-initialised would not match
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    meta = {
        "format": 1,
        "model": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()},
        "vocab_size": tokenizer.vocab_size,
        "context_length": 8,
        "seed": 7,
        "prompt": "안녕",
        "max_new_tokens": 5,
    }
    files = write_model_files(tmp_path, model, tokenizer, meta)
    loaded = load_language_model(files["weights"], files["config"], files["tokenizer"])
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert original[name].dtype == restored[name].dtype
        assert torch.equal(original[name], restored[name]), name
    assert type(loaded.model) is type(model) and not loaded.model.training
    ids = tokenizer.encode("하세요 world")
    assert loaded.tokenizer.encode("하세요 world") == ids and loaded.tokenizer.decode(ids) == "하세요 world"


@pytest.mark.parametrize("name", ["char", "jamo", "bpe", "bytes"])
def test_every_tokenizer_rebuilds_from_its_json(name):
    text = "First Citizen: 안녕하세요, 반가워요!\n" * 20
    tokenizer = build_tokenizer(name, text, text, vocab_size=270 if name == "bpe" else None)
    rebuilt = tokenizer_from_json(json.loads(json.dumps(tokenizer.to_json())))
    sample = "Citizen 반가워요!"
    assert type(rebuilt) is type(tokenizer) and rebuilt.vocab_size == tokenizer.vocab_size
    assert rebuilt.encode(sample) == tokenizer.encode(sample)
    assert rebuilt.decode(tokenizer.encode(sample)) == sample


def test_generate_at_temperature_1_draws_the_plain_softmax_and_top_k_1_is_greedy():
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="gpt", n_layer=1, n_head=2, n_embd=8), 11, 6).eval()
    prompt = torch.tensor([[1, 2, 3]])
    drawn = model.generate(prompt, 12, torch.Generator().manual_seed(4))
    generator, idx = torch.Generator().manual_seed(4), prompt
    with torch.no_grad():  # the lecture's loop, written out: softmax of the last logits, one multinomial draw
        for _ in range(12):
            probs = torch.softmax(model(idx[:, -6:])[0][:, -1, :], dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    assert torch.equal(drawn, idx)
    greedy = [model.generate(prompt, 8, torch.Generator().manual_seed(seed), top_k=1) for seed in (1, 2)]
    idx = prompt
    with torch.no_grad():
        for _ in range(8):
            idx = torch.cat((idx, model(idx[:, -6:])[0][:, -1, :].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(greedy[0], idx) and torch.equal(greedy[1], idx)
    cold = model.generate(prompt, 8, torch.Generator().manual_seed(3), temperature=1e-4)
    assert torch.equal(cold, idx), "a temperature near 0 is greedy too"
    top2 = model.generate(prompt, 40, torch.Generator().manual_seed(5), top_k=2)
    assert len(set(top2[0, 3:].tolist())) > 1, "top-k 2 still samples"


class _RunsACommand:
    """Unpickling this calls os.system: what a crafted model in a shared store could do."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_crafted_weights_file_is_refused_without_running_its_code(in_store, tmp_path, writer):
    uri, client, _, _ = in_store
    run = variant_runs(client, "models")["kind=ffn,seed=1"]
    folder = download_run_model(uri, run.info.run_id, tmp_path / "download")
    weights = folder / "artifacts" / WEIGHTS_FILE
    marker = tmp_path / "pwned"
    payload = {"net.0.weight": _RunsACommand(f"touch {marker}")}
    if writer == "torch.save":
        torch.save(payload, weights)
    else:
        with open(weights, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(ModelFileError, match=r"model\.safetensors is not a safetensors file .*nothing in this file"):
        load_model_folder(folder)
    import mlflow.pyfunc

    with pytest.raises(Exception, match="not a safetensors file"):  # MLflow's own loader reads it the same way
        mlflow.pyfunc.load_model(str(folder))
    assert not marker.exists(), "loading the model ran its code"


def test_a_model_folder_with_another_loader_is_refused(in_store, tmp_path):
    uri, client, _, _ = in_store
    run = variant_runs(client, "models")["kind=bigram,seed=1"]
    folder = download_run_model(uri, run.info.run_id, tmp_path / "download")
    mlmodel = folder / "MLmodel"
    text = mlmodel.read_text(encoding="utf-8")
    mlmodel.write_text(text.replace("mlflow.pyfunc.loaders.code_model", "mlflow.pyfunc.model"), encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a harness model .*'mlflow.pyfunc.model'.*nothing was loaded"):
        load_model_folder(folder)
    shutil.rmtree(folder)
    with pytest.raises(ModelFileError, match="has no MLmodel file"):
        load_model_folder(tmp_path)


def test_crafted_json_files_are_refused_by_name(tmp_path):
    tokenizer = build_tokenizer("char", "abc", "abc")
    model = build_model(ModelConfig(kind="bigram"), tokenizer.vocab_size, 4)
    meta = {"format": 1, "model": {"kind": "bigram"}, "vocab_size": tokenizer.vocab_size, "context_length": 4}
    meta |= {"seed": 1, "prompt": "a", "max_new_tokens": 3}
    files = write_model_files(tmp_path, model, tokenizer, meta)
    config = Path(files["config"])
    config.write_text(json.dumps({**meta, "model": {"kind": "bigram", "evil": 1}}))
    with pytest.raises(ModelFileError, match="model.evil: unknown key"):
        load_language_model(files["weights"], config, files["tokenizer"])
    config.write_text(json.dumps({**meta, "model": {"kind": "transformer"}}))
    with pytest.raises(ModelFileError, match="model.kind: unknown value 'transformer'"):
        load_language_model(files["weights"], config, files["tokenizer"])
    config.write_text(json.dumps(meta))
    Path(files["tokenizer"]).write_text(json.dumps({"name": "sentencepiece"}))
    with pytest.raises(ModelFileError, match="unknown tokenizer 'sentencepiece'"):
        load_language_model(files["weights"], config, files["tokenizer"])


# -- logged with every finished run -------------------------------------------------------------------------------


def test_every_finished_run_logs_its_model_and_stacked_seeds_each_get_their_own(store):
    uri, client, _, _ = store
    runs = variant_runs(client, "models")
    assert set(runs) == {f"kind={k},seed={s}" for k in ("bigram", "ffn") for s in (1, 2)}
    model_ids = {}
    for variant, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags[STACKED_TAG] == "1,2", "the seeds trained as one stack"
        outputs = run.outputs.model_outputs
        assert len(outputs) == 1 and outputs[0].step == 30
        model = client.get_logged_model(outputs[0].model_id)
        assert model.name == MODEL_NAME and model.source_run_id == run.info.run_id
        assert str(model.status).endswith("READY") and model.params["train.seed"] == run.data.params["train.seed"]
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        files |= {
            f"artifacts/{Path(a.path).name}" for a in client.list_logged_model_artifacts(model.model_id, "artifacts")
        }
        assert {"MLmodel", "pyfunc_code.py", f"artifacts/{WEIGHTS_FILE}", f"artifacts/{CONFIG_FILE}"} <= files
        assert f"artifacts/{TOKENIZER_FILE}" in files and not any(f.endswith(".pkl") for f in files)
        model_ids[variant] = model.model_id
    assert len(set(model_ids.values())) == 4, "each seed of a stack has a model of its own"
    first = load_run_model(uri, runs["kind=ffn,seed=1"].info.run_id)
    second = load_run_model(uri, runs["kind=ffn,seed=2"].info.run_id)
    assert first.meta["seed"] == 1 and second.meta["seed"] == 2
    weights = [m.model.state_dict()["net.0.weight"] for m in (first, second)]
    assert not torch.equal(*weights), "each seed's model holds its own slice of the stack"
    meta = first.meta
    assert meta["harness_version"] and meta["variant"] == "kind=ffn,seed=1" and meta["tokenizer"] == "char"
    assert meta["config_hash"] == runs["kind=ffn,seed=1"].data.tags["config_hash"]


def test_log_model_false_logs_none_and_changes_no_hash(store, data_dir):
    _, client, _, specs = store
    (plain,) = variant_runs(client, "no-model").values()
    assert plain.info.status == "FINISHED" and not plain.outputs.model_outputs
    variants = expand(load_spec(specs["models"]))
    off = expand(load_spec(specs["models"]), {"train.log_model": False})
    assert [v.config.config_hash() for v in off] == [v.config.config_hash() for v in variants]


# -- harness sample ----------------------------------------------------------------------------------------------


def test_sample_reproduces_each_runs_logged_sample_bit_for_bit(in_store, tmp_path):
    _, client, _, specs = in_store
    for experiment in ("models", "model-tokenizers"):
        for variant, run in variant_runs(client, experiment).items():
            code, out, err = run_cli("sample", run.info.run_id)
            assert code == 0, err
            expected = logged_sample(client, run.info.run_id, tmp_path / run.info.run_id)
            assert out == expected + "\n", variant
            assert out.startswith("안녕") and unicodedata.is_normalized("NFC", out)


def test_jamo_and_bpe_models_print_readable_korean(in_store):
    _, client, _, _ = in_store
    runs = variant_runs(client, "model-tokenizers")
    for variant in runs:
        code, out, err = run_cli("sample", runs[variant].info.run_id, "--prompt", "오늘 날씨", "--max-new-tokens", "40")
        assert code == 0, err
        # NFC: a generated jamo may complete the prompt's last syllable (씨 + ᆼ prints 씽), never split from it
        assert out.startswith("오늘 날") and unicodedata.is_normalized("NFC", out)
        assert len(out) < len(unicodedata.normalize("NFD", out)), "syllables, not loose jamo"


def test_sample_by_spec_and_filter_with_every_option(in_store):
    _, client, _, specs = in_store
    runs = variant_runs(client, "models")
    args = ["--prompt", "오늘", "--max-new-tokens", "15", "--temperature", "0.8", "--top-k", "5", "--seed", "3"]
    code, by_filter, err = run_cli("sample", str(specs["models"]), "kind=ffn,seed=2", *args, "--num-samples", "2")
    assert code == 0, err
    code, by_id, _ = run_cli("sample", runs["kind=ffn,seed=2"].info.run_id, *args, "--num-samples", "2")
    assert by_filter == by_id
    blocks = by_id.split("--- sample 2 of 2 ---\n")
    assert blocks[0].startswith("--- sample 1 of 2 ---\n오늘") and blocks[1].startswith("오늘")
    first = blocks[0].removeprefix("--- sample 1 of 2 ---\n")
    _, alone, _ = run_cli("sample", runs["kind=ffn,seed=2"].info.run_id, *args)
    assert alone == first, "the first of several samples is the one the seed gives alone"
    _, dotted, _ = run_cli("sample", str(specs["models"]), "model.kind=ffn", "train.seed=2", *args)
    assert dotted == alone
    _, other_seed, _ = run_cli("sample", runs["kind=ffn,seed=2"].info.run_id, *args[:-1], "4")
    assert other_seed != alone


def test_pyfunc_predict_in_a_fresh_process_equals_harness_sample(in_store):
    uri, client, root, _ = in_store
    run_id = variant_runs(client, "models")["kind=ffn,seed=1"].info.run_id
    script = (
        "import json, mlflow, sys\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        f"model = mlflow.pyfunc.load_model('runs:/{run_id}/model')\n"
        "texts = model.predict(['안녕'], params={'max_new_tokens': 100, 'temperature': 0.8, 'top_k': 50, 'seed': 1})\n"
        "default = model.predict(['안녕', '오늘'])\n"
        "print(json.dumps({'texts': list(texts), 'default': list(default)}))\n"
    )
    env = harness_env(uri, None)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    code, out, err = run_cli(
        "sample", run_id, "--prompt", "안녕", "--max-new-tokens", "100", "--temperature", "0.8", "--top-k", "50"
    )
    assert code == 0, err
    assert got["texts"] == [out.removesuffix("\n")] and len(got["texts"][0]) > 50
    _, own, _ = run_cli("sample", run_id)
    _, today, _ = run_cli("sample", run_id, "--prompt", "오늘")
    assert got["default"] == [own.removesuffix("\n"), today.removesuffix("\n")], "each prompt seeded alone"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["0123456789abcdef0123456789abcdef"], "no run '0123456789abcdef0123456789abcdef' in the tracking store"),
        (
            ["{spec}", "kind=gpt"],
            "no finished variant of 'models' matches kind=gpt; its finished variants:\n  kind=bigram",
        ),
        (["{spec}", "kind=ffn"], "kind=ffn matches 2 finished variants of 'models'; add keys .*\n  kind=ffn,seed=1 .*"),
        (["{spec}", "knd=ffn"], "filter key 'knd' is not a config key of these runs; keys: .*kind"),
        (["{spec}", "kind=ffn,seed=1", "--prompt", "안녕★é"], r"2 character\(s\) outside .*'★' \(U\+2605\), 'é'"),
        (["{spec}", "kind=ffn,seed=1", "--temperature", "0"], "--temperature must be a number > 0, got 0.0"),
        (["{spec}", "kind=ffn,seed=1", "--temperature", "-1"], "--temperature must be a number > 0"),
        (["{spec}", "kind=ffn,seed=1", "--top-k", "0"], "--top-k must be an integer >= 1"),
        (["{spec}", "kind=ffn,seed=1", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        (["{spec}", "kind=ffn,seed=1", "--num-samples", "0"], "--num-samples must be an integer >= 1"),
        (["{spec}", "kind=ffn,seed=1", "--prompt", ""], "the prompt must be at least one character"),
        (["missing.yaml"], "no spec file missing.yaml"),
    ],
)
def test_bad_sample_input_exits_2_naming_the_problem(in_store, argv, message):
    import re

    _, _, _, specs = in_store
    argv = [str(specs["models"]) if a == "{spec}" else a for a in argv]
    code, out, err = run_cli("sample", *argv)
    assert code == 2 and out == ""
    assert re.search(message, err, re.S), err


def test_a_run_with_no_model_exits_2_saying_why(in_store):
    _, client, _, specs = in_store
    (plain,) = variant_runs(client, "no-model").values()
    code, out, err = run_cli("sample", plain.info.run_id)
    assert code == 2 and out == ""
    assert f"run {plain.info.run_id} (variant {plain.data.tags['variant']}, FINISHED)" in err
    assert "has no logged model" in err and "train.log_model: false" in err
    code, _, err = run_cli("sample", str(specs["no-model"]))
    assert code == 2 and "has no logged model" in err


# -- serving -----------------------------------------------------------------------------------------------------


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode("utf-8"), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_over_loopback(in_store, tmp_path):
    uri, client, root, _ = in_store
    run_id = variant_runs(client, "models")["kind=ffn,seed=1"].info.run_id
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = harness_env(uri, None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # MLflow execs uvicorn
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model"]
    proc = subprocess.Popen(
        [*mlflow_cli, "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow models serve did not start:\n" + (tmp_path / "serve.log").read_text())
            time.sleep(0.5)
        params = {"max_new_tokens": 30, "temperature": 0.8, "top_k": 50, "seed": 1}
        status, answer = post(base + "/invocations", {"inputs": ["안녕"], "params": params})
        assert status == 200, answer
        code, out, _ = run_cli(
            "sample", run_id, "--prompt", "안녕", "--max-new-tokens", "30", "--temperature", "0.8", "--top-k", "50"
        )
        assert code == 0 and answer == {"predictions": [out.removesuffix("\n")]}
        status, answer = post(base + "/invocations", {"inputs": ["안녕"], "params": {"temperature": 0.0}})
        assert status == 400 and "temperature must be a number > 0" in answer["message"]
    finally:
        kill_group(proc.pid, signal.SIGTERM)  # the server and its workers: the group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            proc.wait()


# -- the registry ------------------------------------------------------------------------------------------------

REGISTER_SPEC = """\
name: champions
base:
  data: {{dataset: tinyshakespeare}}
  model: {{kind: bigram}}
  train: {{steps: 30, eval_interval: 15, device: cpu, batch_size: 16, context_length: 8}}
  sample: {{max_new_tokens: 10}}
grid:
  train.lr: [{lrs}]
seeds: [1, 2]
"""


def test_register_names_the_best_and_the_alias_moves_when_the_best_changes(mlflow_store, tmp_path, data_dir):
    spec = tmp_path / "champions.yaml"
    client = MlflowClient(mlflow_store)
    versions = []
    for lrs, best in (("0.001, 0.01", "lr=0.01"), ("0.01, 0.1", "lr=0.1")):
        spec.write_text(REGISTER_SPEC.format(lrs=lrs), encoding="utf-8")
        results = str(tmp_path / "results")
        code, out, err = run_cli(
            "run", str(spec), "--data-dir", str(data_dir), "--results-dir", results, "--no-progress"
        )
        assert code == 0, out + err
        code, out, err = run_cli("register", str(spec))
        assert code == 0, err
        champion = client.get_model_version_by_alias("champions", "champion")
        tags = champion.tags
        assert tags["harness.setting"] == best and tags["harness.metric"] == "final_val_loss"
        assert tags["harness.seeds"] == "2" and "95% t-interval, n=2 seeds" in tags["harness.ci95"]
        summary = __import__("pandas").read_csv(tmp_path / "results" / "champions" / "summary.csv")
        row = summary.set_index("setting").loc[best]
        assert float(tags["harness.mean"]) == pytest.approx(row["final_val_loss_mean"], abs=1e-6)
        assert f"[{row['final_val_loss_ci_low']:.4f}, {row['final_val_loss_ci_high']:.4f}]" in tags["harness.ci95"]
        assert tags["harness.runner_up"] != best and float(tags["harness.runner_up_mean"]) > float(tags["harness.mean"])
        run = client.get_run(champion.run_id)
        assert run.data.tags["variant"].startswith(best) and champion.source.startswith("models:/m-")
        versions.append(champion.version)
        assert f"alias champion: version {champion.version}" in out
    assert versions == ["1", "2"] or [int(v) for v in versions] == [1, 2]
    assert "moved from version 1" in out
    code, out, _ = run_cli("register", str(spec))  # the same best again: no new version
    assert code == 0 and "already registered as champions version 2" in out
    assert len(client.search_model_versions("name = 'champions'")) == 2
    import mlflow

    mlflow.set_tracking_uri(mlflow_store)  # the notebook's three lines (docs/models.md)
    model = mlflow.pyfunc.load_model("models:/champions@champion")
    texts = model.predict(["First"], params={"max_new_tokens": 20, "temperature": 0.8, "seed": 1})
    champion = client.get_model_version_by_alias("champions", "champion")
    _, out, _ = run_cli(
        "sample", champion.run_id, "--prompt", "First", "--max-new-tokens", "20", "--temperature", "0.8", "--seed", "1"
    )
    assert texts == [out.removesuffix("\n")]


def test_register_bad_input_exits_2_and_registers_nothing(mlflow_store, tmp_path):
    spec = tmp_path / "champions.yaml"
    spec.write_text(REGISTER_SPEC.format(lrs="0.01"), encoding="utf-8")
    code, _, err = run_cli("register", str(spec))
    assert code == 2 and "no MLflow experiment 'champions'" in err
    code, _, err = run_cli("register", str(spec), "--metric", "accuracy")
    assert code == 2 and "unknown metric 'accuracy'" in err
    assert MlflowClient(mlflow_store).search_registered_models() == []
