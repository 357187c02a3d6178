"""A trained variant as an MLflow model: written, logged to its run, read back, and sampled through pyfunc.

A logged model (MLflow 3: a LoggedModel linked to the run, ``runs:/<run id>/model``) holds three data files
and no pickle:

- ``model.safetensors``: the weights (safetensors: tensors only, nothing in the file is executed on load);
- ``model.json``: what rebuilds the model (its ``model`` section, vocabulary size, context length), the run's
  seed, prompt and sample length, the variant, its config hash and the harness version;
- ``tokenizer.json``: the tokenizer's vocabulary (char, jamo) or its Hugging Face BPE file (bpe).

MLflow loads it as a pyfunc model from code (``harness/tracking/pyfunc_code.py``, MLflow's models-from-code):
that file only names ``HarnessLanguageModel``, whose ``load_context`` reads the three files with
``load_language_model``. ``harness sample`` reads them with the same function, without MLflow's loader.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.pyfunc import PythonModel
from mlflow.tracking import MlflowClient

from harness import __version__ as HARNESS_VERSION
from harness.data.tokenizers import Tokenizer, tokenizer_from_json
from harness.models import ModelConfig
from harness.models.base import CharLanguageModel
from harness.models.registry import build_model
from harness.models.sampling import SamplingError, check_settings, sample_texts
from harness.spec.keys import key_problem, type_value
from harness.tracking.store import quiet_downloads, retrying

MODEL_NAME = "model"  # runs:/<run id>/model
MODEL_TYPE = "char-lm"  # the LoggedModel's model_type in MLflow's Models tab
MODEL_FORMAT = 1  # model.json's "format": what this code writes and reads
WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "model.json", "tokenizer.json"
ARTIFACT_KEYS = {"weights": WEIGHTS_FILE, "config": CONFIG_FILE, "tokenizer": TOKENIZER_FILE}
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")
LOADER = "mlflow.pyfunc.loaders.code_model"  # the MLmodel's loader_module for models from code
PARAMS = ("max_new_tokens", "temperature", "top_k", "seed", "num_samples")
INPUT_EXAMPLE_TOKENS = 8  # MLflow runs the input example once when it saves the model: a short one


logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # not "Validating input example" once per run


class ModelFileError(ValueError):
    """A model folder that is not a harness model (a missing, foreign or crafted file); the message names it."""


@dataclass
class LoadedModel:
    """A logged model read back: the network (eval mode, on the CPU), its tokenizer and its ``model.json``."""

    model: CharLanguageModel
    tokenizer: Tokenizer
    meta: dict[str, Any]

    def sample(
        self,
        prompt: str | None = None,
        max_new_tokens: int | None = None,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        num_samples: int = 1,
    ) -> list[str]:
        """Continuations of ``prompt``; the defaults (the run's prompt, sample length and seed, temperature 1, no
        top-k) draw the run's own sample."""
        return sample_texts(
            self.model,
            self.tokenizer,
            self.meta["prompt"] if prompt is None else prompt,
            self.default_tokens if max_new_tokens is None else max_new_tokens,
            seed=self.meta["seed"] if seed is None else seed,
            temperature=temperature,
            top_k=top_k,
            num_samples=num_samples,
        )

    @property
    def default_tokens(self) -> int:
        return max(1, int(self.meta["max_new_tokens"]))


# -- writing --------------------------------------------------------------------------------------------------


def harness_version() -> str:
    """The installed distribution's version (``nanoko-harness``), else the package's own."""
    try:
        return importlib.metadata.version("nanoko-harness")
    except importlib.metadata.PackageNotFoundError:
        return HARNESS_VERSION


def model_meta(config, variant_id: str, vocab_size: int) -> dict[str, Any]:
    """``model.json``: what rebuilds the model and what its run sampled with."""
    return {
        "format": MODEL_FORMAT,
        "harness_version": harness_version(),
        "variant": variant_id,
        "config_hash": config.config_hash(),
        "model": {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(config.model).items()},
        "vocab_size": vocab_size,
        "context_length": config.train.context_length,
        "tokenizer": config.data.tokenizer,
        "dataset": config.data.dataset,
        "seed": config.train.seed,
        "prompt": config.sample.prompt,
        "max_new_tokens": config.sample.max_new_tokens,
    }


def write_model_files(folder: Path, model: CharLanguageModel, tokenizer: Tokenizer, meta: dict) -> dict[str, str]:
    """The three files in ``folder``; returns them as pyfunc artifacts (key -> path)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": str(MODEL_FORMAT)})
    (folder / CONFIG_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / TOKENIZER_FILE).write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False), encoding="utf-8")
    return {key: str(folder / name) for key, name in ARTIFACT_KEYS.items()}


def signature(meta: dict):
    """Input: a column of prompts; output: a column of texts; params: the sampling settings, the run's by default."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", max(1, int(meta["max_new_tokens"]))),
                ParamSpec("temperature", "double", 1.0),
                ParamSpec("top_k", "long", None),
                ParamSpec("seed", "long", int(meta["seed"])),
                ParamSpec("num_samples", "long", 1),
            ]
        ),
    )


def requirements() -> list[str]:
    """What the model imports, pinned to what wrote it (MLflow would otherwise infer them, in a subprocess).
    The harness itself is not on PyPI: load the model where the harness is installed (``--env-manager local``)."""
    import safetensors
    import tokenizers

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"safetensors=={safetensors.__version__}",
        f"tokenizers=={tokenizers.__version__}",
    ]


def log_model(
    client: MlflowClient,
    run_id: str,
    experiment_id: str,
    model: CharLanguageModel,
    tokenizer: Tokenizer,
    config,
    variant_id: str,
    *,
    step: int = 0,
) -> str:
    """Log the model of ``run_id`` as an MLflow LoggedModel named ``model``, linked to the run as its output at
    ``step``; returns the model id. The LoggedModel ends READY, or FAILED when a step fails (which re-raises).

    Everything goes through ``client`` (the run's own store, a tracking server included), never the global
    active run or tracking URI, so threads of one process log their runs' models side by side."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    meta = model_meta(config, variant_id, tokenizer.vocab_size)
    params = {key: ",".join(map(str, v)) if isinstance(v, list) else str(v) for key, v in config.flat().items()}
    logged = retrying(
        lambda: client.create_logged_model(
            experiment_id,
            name=MODEL_NAME,
            source_run_id=run_id,
            params=params,
            tags={
                "variant": variant_id,
                "config_hash": meta["config_hash"],
                "harness_version": meta["harness_version"],
            },
            model_type=MODEL_TYPE,
        )
    )
    try:
        retrying(lambda: client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=step)]))
        with tempfile.TemporaryDirectory(prefix="harness-model-") as tmp, quiet_downloads():
            artifacts = write_model_files(Path(tmp) / "files", model, tokenizer, meta)
            local = Path(tmp) / MODEL_NAME
            mlflow_model = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
                metadata={"harness_version": meta["harness_version"], "variant": variant_id},
            )
            mlflow.pyfunc.save_model(
                str(local),
                python_model=str(PYFUNC_CODE),
                artifacts=artifacts,
                mlflow_model=mlflow_model,
                signature=signature(meta),
                input_example=([meta["prompt"]], {"max_new_tokens": INPUT_EXAMPLE_TOKENS}),
                pip_requirements=requirements(),
            )
            retrying(lambda: client.log_model_artifacts(logged.model_id, str(local)))
        retrying(lambda: client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY))
    except BaseException:
        try:
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        except Exception:  # the store itself is failing: the run's own error says why
            pass
        raise
    return logged.model_id


# -- reading --------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file; a harness model has {what} there") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path} is not a harness model's {what} (not JSON: {exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} is not a harness model's {what} (a JSON {type(data).__name__}, not an object)")
    return data


def model_config_of(meta: dict, where: str) -> ModelConfig:
    """The ``model`` section of ``model.json``, each key typed and checked as a spec's would be."""
    section = meta.get("model")
    if not isinstance(section, dict):
        raise ModelFileError(f"{where}: 'model' must be an object of model.* keys, got {section!r}")
    values = {}
    for key, value in section.items():
        problem = key_problem(f"model.{key}") or type_value(f"model.{key}", value)[1]
        if problem:
            raise ModelFileError(f"{where}: model.{key}: {problem}")
        values[key] = type_value(f"model.{key}", value)[0]
    config = ModelConfig(**values)
    if config.problems():
        raise ModelFileError(f"{where}: " + "; ".join(f"model.{k}: {m}" for k, m in config.problems()))
    return config


def load_language_model(weights: str | Path, config: str | Path, tokenizer: str | Path) -> LoadedModel:
    """The model of a logged model's three files, on the CPU in eval mode.

    Only data is read: JSON, and weights through safetensors, which holds tensors and nothing else. A file that is
    anything else (a pickle that would run code, say) raises ``ModelFileError`` and nothing in it is executed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = _read_json(Path(config), "model.json")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{config}: format {meta.get('format')!r}; this harness reads format {MODEL_FORMAT} (harness "
            f"{harness_version()}; the model was written by harness {meta.get('harness_version', 'unknown')})"
        )
    missing = [k for k in ("vocab_size", "context_length", "seed", "prompt", "max_new_tokens") if k not in meta]
    if missing:
        raise ModelFileError(f"{config}: lacks {', '.join(missing)}")
    for key in ("vocab_size", "context_length", "seed", "max_new_tokens"):
        if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < (1 if key != "seed" else 0):
            raise ModelFileError(f"{config}: {key} must be a non-negative integer, got {meta[key]!r}")
    model_config = model_config_of(meta, str(config))
    try:
        tok = tokenizer_from_json(_read_json(Path(tokenizer), "tokenizer.json"))
    except ValueError as exc:
        raise ModelFileError(f"{tokenizer}: {exc}") from None
    if tok.vocab_size != meta["vocab_size"]:
        raise ModelFileError(
            f"{tokenizer}: a vocabulary of {tok.vocab_size}, but {config} says the model's is {meta['vocab_size']}"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except FileNotFoundError:
        raise ModelFileError(f"{weights}: no such file; a harness model keeps its weights there") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{weights} is not a safetensors file ({exc}); a harness model's weights are safetensors only, and "
            "nothing in this file was executed"
        ) from None
    model = build_model(model_config, meta["vocab_size"], meta["context_length"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{weights}: the weights do not fit the model {config} describes: {exc}") from None
    return LoadedModel(model.eval(), tok, meta)


def load_model_folder(folder: str | Path) -> LoadedModel:
    """A downloaded model folder (``runs:/<id>/model``): its MLmodel must be the harness's, then its three files."""
    import yaml

    folder = Path(folder)
    mlmodel = folder / "MLmodel"
    try:
        description = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{folder} has no MLmodel file: not an MLflow model") from None
    flavor = (description or {}).get("flavors", {}).get("python_function", {}) if isinstance(description, dict) else {}
    code = Path(str(flavor.get("model_code_path", ""))).name
    if flavor.get("loader_module") != LOADER or code != PYFUNC_CODE.name:
        raise ModelFileError(
            f"{mlmodel}: not a harness model (its pyfunc loader is {flavor.get('loader_module')!r}, code "
            f"{code or None!r}; a harness model is loaded from code by {PYFUNC_CODE.name}); nothing was loaded"
        )
    artifacts = folder / "artifacts"
    return load_language_model(artifacts / WEIGHTS_FILE, artifacts / CONFIG_FILE, artifacts / TOKENIZER_FILE)


# -- the pyfunc model -----------------------------------------------------------------------------------------


def _prompts(model_input) -> list[str]:
    """The prompts of a pyfunc input: a list of strings, a string, or a one-column DataFrame or array of them."""
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise SamplingError(f"expected one column of prompts, got columns {list(model_input.columns)}")
        values = model_input.iloc[:, 0].tolist()
    elif isinstance(model_input, (pd.Series, np.ndarray)):
        values = list(np.asarray(model_input).reshape(-1))
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise SamplingError(f"prompts must be strings, got {bad[0]!r}")
    return values


# MLflow warns, when a PythonModel subclass is defined, that ``predict`` has no type hints; hints would make it
# infer a signature replacing the one written here (params and their defaults lost). Its own ``catch_warnings``
# there overrides any filter, so the warning is not shown for this one class definition.
_shown, warnings.showwarning = warnings.showwarning, lambda *args, **kwargs: None
try:

    class HarnessLanguageModel(PythonModel):
        """The pyfunc model: ``predict(prompts, params)`` -> one text per prompt and sample.

        params (all optional; the signature's defaults are the run's): ``max_new_tokens``, ``temperature`` (> 0),
        ``top_k`` (>= 1, or none), ``seed`` and ``num_samples``. Each prompt is sampled from its own generator seeded
        with ``seed``, so a prompt's text does not depend on the others; its ``num_samples`` texts come in a row.
        """

        def load_context(self, context) -> None:
            artifacts = context.artifacts
            self.loaded = load_language_model(artifacts["weights"], artifacts["config"], artifacts["tokenizer"])

        def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
            from mlflow.exceptions import MlflowException

            params = dict(params or {})
            unknown = sorted(set(params) - set(PARAMS))
            loaded = self.loaded
            settings = {
                "max_new_tokens": params.get("max_new_tokens", loaded.default_tokens),
                "temperature": params.get("temperature", 1.0),
                "top_k": params.get("top_k"),
                "seed": params.get("seed", loaded.meta["seed"]),
                "num_samples": params.get("num_samples", 1),
            }
            try:
                if unknown:
                    raise SamplingError(f"unknown params {', '.join(unknown)}; choices: {', '.join(PARAMS)}")
                check_settings(
                    settings["max_new_tokens"], settings["temperature"], settings["top_k"], settings["num_samples"]
                )
                return [text for prompt in _prompts(model_input) for text in loaded.sample(prompt, **settings)]
            except SamplingError as exc:  # a bad request: HTTP 400 from `mlflow models serve`
                raise MlflowException.invalid_parameter_value(str(exc)) from None
finally:
    warnings.showwarning = _shown


# -- finding a run's model ------------------------------------------------------------------------------------


class RunSelectionError(LookupError):
    """No run, or several, where one was meant: an unknown run id, a filter matching none or several variants."""


class NoModelError(RunSelectionError):
    """An unknown run id, or a run that logged no model; the message says which and why."""


def run_model_id(client: MlflowClient, run_id: str) -> str:
    """The id of the model ``run_id`` logged; ``NoModelError`` names an unknown run or one without a model."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise NoModelError(f"no run {run_id!r} in the tracking store") from None
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    ids = [o.model_id for o in outputs]
    if not ids:
        experiment = run.info.experiment_id
        found = client.search_logged_models(experiment_ids=[experiment], filter_string=f"name = '{MODEL_NAME}'")
        ids = [m.model_id for m in found if m.source_run_id == run_id]
    ready = []
    for model_id in ids:
        model = client.get_logged_model(model_id)
        if model.name == MODEL_NAME and model.status == LoggedModelStatus.READY:  # not a FAILED half-logged one
            ready.append(model)
    if not ready:
        status, variant = run.info.status, run.data.tags.get("variant", "?")
        why = (
            "it did not finish"
            if status != "FINISHED"
            else "it finished without one (train.log_model: false, or a harness from before models were logged)"
        )
        raise NoModelError(f"run {run_id} (variant {variant}, {status}) has no logged model: {why}")
    return max(ready, key=lambda m: m.creation_timestamp).model_id


def download_run_model(uri: str, run_id: str, dst: str | Path) -> Path:
    """The model folder of ``run_id`` in the store at ``uri``, downloaded into ``dst``."""
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(uri)
    location = client.get_logged_model(run_model_id(client, run_id)).artifact_location  # models:/ would ask the
    return Path(download_artifacts(artifact_uri=location, dst_path=str(dst), tracking_uri=uri))  # global store


def load_run_model(uri: str, run_id: str) -> LoadedModel:
    """The model ``run_id`` logged, read with ``load_model_folder`` (no MLflow loader, no code from the store)."""
    with tempfile.TemporaryDirectory(prefix="harness-model-") as tmp, quiet_downloads():
        return load_model_folder(download_run_model(uri, run_id, tmp))


def _terms(filters: list[str]) -> list[tuple[str, str]]:
    """``kind=ffn,dataset=korean-chatbot`` (one word or several) -> [(key, value)]; a comma only separates terms
    when a ``key=`` follows it, so a list value reads as written (``hidden_sizes=256,128`` or ``256x128``)."""
    terms = []
    for word in filters:
        for term in re.split(r",(?=[A-Za-z_][\w.]*=)", word):
            key, sep, value = term.partition("=")
            if not sep or not key:
                raise RunSelectionError(f"filter {term!r} is not key=value (e.g. kind=ffn,dataset=korean-chatbot)")
            terms.append((key.strip(), value.strip()))
    return terms


def _same(param: str | None, wanted: str) -> bool:
    if param is None:
        return False
    if param == wanted or param.replace(",", "x") == wanted.replace(",", "x"):
        return True
    try:
        return float(param) == float(wanted)
    except ValueError:
        return param.lower() == wanted.lower() and param.lower() in ("true", "false", "none")


def select_run(uri: str, experiment: str, filters: list[str]) -> str:
    """The latest FINISHED run of the one variant of ``experiment`` that ``filters`` match (keys short, ``kind``,
    or dotted, ``model.kind``, compared with the run's params). A RunSelectionError lists what matched: none or
    several."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise RunSelectionError(f"no MLflow experiment {experiment!r} at {uri}: train the spec first (harness run)")
    runs = client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'", max_results=50000)
    latest: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):
        tags = run.data.tags
        if "variant" in tags and "config_hash" in tags:
            latest.setdefault(tags["config_hash"], run)
    variants = list(latest.values())
    if not variants:
        raise RunSelectionError(f"experiment {experiment!r} has no finished run")
    keys = sorted({key for run in variants for key in run.data.params if "." in key})
    matched = variants
    for key, value in _terms(filters):
        full = [k for k in keys if k == key or k.split(".", 1)[1] == key]
        if not full:
            short = sorted({k.split(".", 1)[1] for k in keys})
            raise RunSelectionError(f"filter key {key!r} is not a config key of these runs; keys: {', '.join(short)}")
        if len(full) > 1:
            raise RunSelectionError(f"filter key {key!r} is ambiguous: {', '.join(full)}; write it dotted")
        matched = [run for run in matched if _same(run.data.params.get(full[0]), value)]
    listing = "\n".join(
        f"  {run.data.tags['variant']}  (run {run.info.run_id})"
        for run in sorted(matched or variants, key=lambda r: r.data.tags["variant"])
    )
    wanted = ",".join(filters) or "(no filter)"
    if not matched:
        raise RunSelectionError(
            f"no finished variant of {experiment!r} matches {wanted}; its finished variants:\n{listing}"
        )
    if len(matched) > 1:
        raise RunSelectionError(
            f"{wanted} matches {len(matched)} finished variants of {experiment!r}; add keys to pick one "
            f"(e.g. seed=...):\n{listing}"
        )
    return matched[0].info.run_id
