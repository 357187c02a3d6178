"""The keys a spec may set: the sections, their dotted keys, defaults, choices and how a value is typed (pydantic)."""

from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import MISSING, Field, fields
from typing import Annotated, Any

import pydantic

from harness.data.corpora import DATASET_CHOICES, SPLIT_CHOICES, DataConfig
from harness.data.tokenizers import TOKENIZER_CHOICES
from harness.metrics import FINALS
from harness.models import ATTENTION_SCALE_CHOICES, INIT_CHOICES, LAYER_NORM_CHOICES, MODEL_KINDS, ModelConfig
from harness.spec.problems import SpecError, suggest
from harness.train.config import LR_SCHEDULE_CHOICES, PRECISION_CHOICES, SampleConfig, TrainConfig

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "base",
    "grid",
    "zip",
    "exclude",
    "seeds",
    "references",
    "practical_difference",
    "tune",
)
PRACTICAL_DIFFERENCE = 0.01  # nats: the default δ of the report's verdicts (a report setting, never in a run's hash)
REFERENCE_KEYS = ("match", "metric", "value", "source")
# The `tune` section: its own options beside the dotted keys it tunes (harness/tuning.py).
TUNE_OPTIONS = ("seeds", "metric", "extend", "search", "trials", "compare_untuned")
TUNE_METRICS = ("final_val_loss", "final_val_bpc", "final_train_loss", "final_train_bpc")  # lower is better
TUNE_SECTIONS = ("train", "model")  # what a tune key may set
TUNE_SEARCHES = ("grid", "tpe")
TUNE_EXTEND = 2  # default of tune.extend
RANGE_KEYS = ("low", "high", "log")
SEED_KEY = "train.seed"
IDENTITY_VERSION = 2  # recorded as the `identity_version` tag beside `config_hash`
# What an editor can check of a name (JSON Schema's regex has no \p{L} everywhere): no separator, space, control
# character or leading dot, -, _. harness.spec.names.name_problem checks the rest (letters of any script, NFC).
NAME_PATTERN = r"[^\s/\\.\-_\x00-\x1f\x7f][^\s/\\\x00-\x1f\x7f]*"
AXIS_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
REFERENCE_METRICS = tuple(FINALS)  # the runs.csv metric columns
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Keys whose value is one of a fixed set: checked here with a "did you mean", and enums in the JSON Schema.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": DATASET_CHOICES,
    "data.split": SPLIT_CHOICES,
    "data.tokenizer": TOKENIZER_CHOICES,
    "model.kind": MODEL_KINDS,
    "model.layer_norm": LAYER_NORM_CHOICES,
    "model.init": INIT_CHOICES,
    "model.attention_scale": ATTENTION_SCALE_CHOICES,
    "train.precision": PRECISION_CHOICES,
    "train.lr_schedule": LR_SCHEDULE_CHOICES,
}

# Identity version 1 (before the GPT kind): the keys it hashed, as written, and the defaults it had.
V1_KEYS = (
    "data.dataset",
    "data.path",
    "data.encoding",
    "data.train_fraction",
    "model.kind",
    "model.hidden_sizes",
    "train.steps",
    "train.batch_size",
    "train.context_length",
    "train.lr",
    "train.weight_decay",
    "train.eval_interval",
    "train.eval_iters",
    "train.seed",
    "train.device",
    "train.fast_path",
    "train.precision",
    "train.compile",
    "train.threads",
    "train.checkpoint_interval",
    "sample.prompt",
    "sample.max_new_tokens",
)
V1_DEFAULTS = {"train.eval_interval": 500, "train.eval_iters": 50}
V1_MODEL_KINDS = ("bigram", "ffn")


def all_dotted_keys() -> list[str]:
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]


@functools.cache
def config_field(key: str) -> Field:
    section, name = key.split(".")
    return next(f for f in fields(SECTIONS[section]) if f.name == name)


@functools.cache
def _annotation(key: str):
    section, name = key.split(".")
    return typing.get_type_hints(SECTIONS[section])[name]


def default_of(key: str) -> Any:
    f = config_field(key)
    return f.default if f.default is not MISSING else f.default_factory()


def is_identity(key: str) -> bool:
    return config_field(key).metadata.get("identity", True)


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a ``section.field`` key, with the valid choices; None when it is one."""
    if not isinstance(key, str) or key.count(".") != 1:
        return f"{key!r} is not a dotted key like 'train.batch_size'{suggest(key, all_dotted_keys())}"
    section, name = key.split(".")
    if section not in SECTIONS:
        return f"unknown section {section!r} in {key!r}; choices: {', '.join(SECTIONS)}{suggest(section, SECTIONS)}"
    names = [f.name for f in fields(SECTIONS[section])]
    if name not in names:
        return f"unknown key {key!r}; valid keys in {section}: {', '.join(names)}{suggest(name, names)}"
    return None


def check_dotted_key(key: Any, where: str) -> tuple[str, str]:
    """``section.field`` -> (section, field), or a SpecError listing what exists."""
    problem = key_problem(key)
    if problem:
        raise SpecError(f"{where}: {problem}")
    return tuple(key.split("."))


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string; a number field takes it as the number."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pydantic_type(annotation):
    """A field's annotation for pydantic's strict mode, loosened only where YAML needs it."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        # a Union built at run time from a tuple of types: `X | Y` cannot spell it
        return typing.Union[tuple(_pydantic_type(a) for a in typing.get_args(annotation))]  # noqa: UP007
    if origin is tuple:
        inner = _pydantic_type(typing.get_args(annotation)[0])
        return Annotated[tuple[inner, ...], pydantic.BeforeValidator(_as_tuple)]
    if annotation is float:  # NaN and ±inf (`.nan`, `.inf`, `1e999`) are no setting of any float key
        return Annotated[float, pydantic.BeforeValidator(_yaml11_float), pydantic.AllowInfNan(False)]
    if annotation is int:  # torch, numpy and MLflow's step and param columns hold 64-bit integers
        return Annotated[int, pydantic.Field(ge=INT64_MIN, le=INT64_MAX)]
    return annotation


@functools.cache
def _adapter(key: str) -> pydantic.TypeAdapter:
    # strict: a bool is not an int, a string is not a number; ints still pass as floats.
    return pydantic.TypeAdapter(_pydantic_type(_annotation(key)), config=pydantic.ConfigDict(strict=True))


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " or null"
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(annotation, str(annotation))


def type_value(key: str, value: Any) -> tuple[Any, str | None]:
    """``(typed value, None)`` or ``(value, message)``: the value checked against the key's type and choices."""
    try:
        typed = _adapter(key).validate_python(value)
    except pydantic.ValidationError as exc:
        kinds = {error["type"] for error in exc.errors()}
        if kinds == {"finite_number"}:
            return (
                value,
                f"expected a finite number, got {value!r} (NaN and ±inf are refused: .nan, .inf, -.inf, 1e999)",
            )
        if kinds <= {"less_than_equal", "greater_than_equal"}:
            return value, (
                f"expected an integer from -2**63 to 2**63 - 1 (64 bits, what torch and MLflow store), got {value!r}"
            )
        name = _type_name(_annotation(key))
        return value, f"expected {name}, got {value!r} ({type(value).__name__})"
    choices = CHOICES.get(key)
    if choices and typed is not None and typed not in choices:
        return value, f"unknown value {typed!r}; choices: {', '.join(choices)}{suggest(typed, choices)}"
    return typed, None


# --- the resolved config and its identity ------------------------------------------------------------------
