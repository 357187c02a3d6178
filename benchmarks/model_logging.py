"""What logging a run's model costs: per kind and corpus, the logged model's size and the time to log and load it.

The variants are the committed specs' own: the seed grid's bigram and FFN (experiments/seed.yaml), nanoGPT's
CPU-sized GPT (experiments/gpt-cpu.yaml) on both corpora, and the lecture's final GPT
(experiments/gpt-shakespeare.yaml). Each model is built as its run builds it (its corpus's vocabulary, its seed;
training changes the values of the weights, not their size or the time to write them) and logged with
``harness.tracking.logged_model.log_model``, exactly as a FINISHED run logs it, into a run of a fresh SQLite store
under a temporary folder. ``log_s`` is the best of ``--repeats`` (each a new run and model); ``load_s`` the best time
of ``load_run_model`` (download and rebuild, as ``harness sample`` does). Sizes are the bytes stored for the
model: ``weights_bytes`` the safetensors file, ``model_bytes`` every file of the logged model.
``load_average_1m``: how busy the (shared) machine was.

    python benchmarks/model_logging.py [--repeats 3] [--out results/bench/model_logging.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from step_speed import write_csv  # noqa: E402

from harness.data.corpora import load_corpus, resolve_data_dir  # noqa: E402
from harness.models.registry import build_model, count_parameters  # noqa: E402
from harness.spec.expansion import expand  # noqa: E402
from harness.spec.parsing import load_spec  # noqa: E402
from harness.tracking.logged_model import load_run_model, log_model  # noqa: E402

SPECS = {"seed.yaml": {"train.seed": 1337}, "gpt-cpu.yaml": {}, "gpt-shakespeare.yaml": {}}


def variants():
    """One variant per (spec, kind, corpus): the first seed and batch size of each."""
    seen = set()
    for name, pick in SPECS.items():
        for variant in expand(load_spec(ROOT / "experiments" / name)):
            cfg = variant.config
            key = (name, cfg.model.kind, cfg.data.dataset)
            if key in seen or any(cfg.flat().get(k) != v for k, v in pick.items()):
                continue
            seen.add(key)
            yield name, variant


def stored_bytes(client: MlflowClient, model_id: str, path: str | None = None) -> dict[str, int]:
    """Every file of a logged model and its size."""
    sizes = {}
    for info in client.list_logged_model_artifacts(model_id, path):
        if info.is_dir:
            sizes |= stored_bytes(client, model_id, info.path)
        else:
            sizes[info.path] = info.file_size
    return sizes


def measure(spec: str, variant, repeats: int, data_dir, root: Path) -> dict:
    cfg = variant.config
    corpus = load_corpus(cfg.data, data_dir)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, corpus.tokenizer.vocab_size, cfg.train.context_length)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench") or client.get_experiment(client.create_experiment("bench"))
    log_times, load_times, model_id, run_id = [], [], None, None
    for _ in range(repeats):
        run_id = client.create_run(experiment.experiment_id).info.run_id
        started = time.perf_counter()
        model_id = log_model(
            client, run_id, experiment.experiment_id, model, corpus.tokenizer, cfg, variant.id, step=cfg.train.steps
        )
        log_times.append(time.perf_counter() - started)
        client.set_terminated(run_id)
        started = time.perf_counter()
        load_run_model(uri, run_id)
        load_times.append(time.perf_counter() - started)
    sizes = stored_bytes(client, model_id)
    weights = next(size for path, size in sizes.items() if path.endswith("model.safetensors"))
    tokenizer = next(size for path, size in sizes.items() if path.endswith("tokenizer.json"))
    return {
        "spec": spec,
        "kind": cfg.model.kind,
        "corpus": cfg.data.dataset,
        "tokenizer": cfg.data.tokenizer,
        "parameters": count_parameters(model),
        "weights_bytes": weights,
        "tokenizer_bytes": tokenizer,
        "model_bytes": sum(sizes.values()),
        "files": len(sizes),
        "log_s": min(log_times),
        "log_s_median": sorted(log_times)[len(log_times) // 2],
        "log_s_first": log_times[0],  # the first row's: the first model logged in the process (imports included)
        "load_s": min(load_times),
        "repeats": repeats,
        "load_average_1m": os.getloadavg()[0],  # the machine is shared: how busy it was
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "model_logging.csv"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    data_dir = resolve_data_dir(None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="model-logging-") as tmp:
        for spec, variant in variants():
            folder = Path(tmp) / f"{len(rows)}"
            folder.mkdir()
            rows.append(measure(spec, variant, args.repeats, data_dir, folder))
            row = rows[-1]
            print(
                f"{row['kind']:>6} {row['corpus']:<15} {row['parameters']:>10,} params  "
                f"model {row['model_bytes'] / 1e6:8.3f} MB (weights {row['weights_bytes'] / 1e6:.3f} MB)  "
                f"log {row['log_s']:.3f} s  load {row['load_s']:.3f} s",
                flush=True,
            )
    table = pd.DataFrame(rows)
    table["torch_version"] = torch.__version__
    import mlflow

    table["mlflow_version"] = mlflow.__version__
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.to_string(index=False))
    write_csv(table, args.out)


if __name__ == "__main__":
    main()
