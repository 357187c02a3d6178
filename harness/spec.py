"""Experiment specs: one YAML file -> validated, typed variants with a stable identity.

A spec has ``name``, ``description``, ``base`` (sections data/model/train/sample), ``grid`` (dotted key ->
values, or a *named axis*: a key without a dot whose levels are named bundles of settings, in the order
written), ``zip`` (groups of equally long lists varied together), ``exclude`` (partial assignments to drop),
``seeds`` (every variant repeated per seed) and ``references`` (published numbers to compare against).

Every problem of a spec is found in one pass and reported together, one line each, as
``file:line:column: key: message`` (PyYAML's node marks), before anything trains.

Identity (``RunConfig.config_hash``, version ``IDENTITY_VERSION``) hashes only what changes the math of
training: keys marked EXECUTION are left out, keys added after version 1 count only when they differ from
their default, model keys count only for the kinds they apply to, the data counts by the sha256 of its
content (not its path), and values are typed first, so ``1`` and ``1.0`` are one learning rate.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import itertools
import json
import re
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

import pydantic
import yaml

from harness import train as train_module
from harness.data import (
    CATALOG,
    DATASET_CHOICES,
    FILE_DATASET,
    SPLIT_CHOICES,
    DataConfig,
    DataError,
    content_sha256,
    locate_catalog_file,
)
from harness.metrics import FINALS
from harness.models import ATTENTION_SCALE_CHOICES, INIT_CHOICES, LAYER_NORM_CHOICES, MODEL_KINDS, ModelConfig
from harness.train import PRECISION_CHOICES, SampleConfig, TrainConfig

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}
TOP_LEVEL_KEYS = ("name", "description", "base", "grid", "zip", "exclude", "seeds", "references")
REFERENCE_KEYS = ("match", "metric", "value", "source")
SEED_KEY = "train.seed"
IDENTITY_VERSION = 2  # recorded as the `identity_version` tag beside `config_hash`
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # `name` becomes a folder under results/: no slashes, no ".."
AXIS_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_-]*"
REFERENCE_METRICS = tuple(FINALS)  # the runs.csv metric columns

# Keys whose value is one of a fixed set: checked here with a "did you mean", and enums in the JSON Schema.
CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": DATASET_CHOICES,
    "data.split": SPLIT_CHOICES,
    "model.kind": MODEL_KINDS,
    "model.layer_norm": LAYER_NORM_CHOICES,
    "model.init": INIT_CHOICES,
    "model.attention_scale": ATTENTION_SCALE_CHOICES,
    "train.precision": PRECISION_CHOICES,
    "train.lr_schedule": getattr(train_module, "LR_SCHEDULE_CHOICES", ("constant", "cosine")),
}

# Identity version 1 (before the GPT kind): the keys it hashed, as written, and the defaults it had.
V1_KEYS = (
    "data.dataset", "data.path", "data.encoding", "data.train_fraction", "model.kind", "model.hidden_sizes",
    "train.steps", "train.batch_size", "train.context_length", "train.lr", "train.weight_decay",
    "train.eval_interval", "train.eval_iters", "train.seed", "train.device", "train.fast_path", "train.precision",
    "train.compile", "train.threads", "train.checkpoint_interval", "sample.prompt", "sample.max_new_tokens",
)
V1_DEFAULTS = {"train.eval_interval": 500, "train.eval_iters": 50}
V1_MODEL_KINDS = ("bigram", "ffn")


class SpecError(Exception):
    """A spec the user must fix: one line per problem. The CLI prints them and exits 2, without a traceback."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(dict.fromkeys(problems))
        super().__init__("\n".join(self.problems))


def _suggest(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- config keys and their types -------------------------------------------------------------------------

def all_dotted_keys() -> list[str]:
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]


@functools.cache
def _field(key: str) -> Field:
    section, name = key.split(".")
    return next(f for f in fields(SECTIONS[section]) if f.name == name)


@functools.cache
def _annotation(key: str):
    section, name = key.split(".")
    return typing.get_type_hints(SECTIONS[section])[name]


def default_of(key: str) -> Any:
    f = _field(key)
    return f.default if f.default is not MISSING else f.default_factory()


def is_identity(key: str) -> bool:
    return _field(key).metadata.get("identity", True)


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a ``section.field`` key, with the valid choices; None when it is one."""
    if not isinstance(key, str) or key.count(".") != 1:
        return f"{key!r} is not a dotted key like 'train.batch_size'{_suggest(key, all_dotted_keys())}"
    section, name = key.split(".")
    if section not in SECTIONS:
        return f"unknown section {section!r} in {key!r}; choices: {', '.join(SECTIONS)}{_suggest(section, SECTIONS)}"
    names = [f.name for f in fields(SECTIONS[section])]
    if name not in names:
        return f"unknown key {key!r}; valid keys in {section}: {', '.join(names)}{_suggest(name, names)}"
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
        return typing.Union[tuple(_pydantic_type(a) for a in typing.get_args(annotation))]
    if origin is tuple:
        inner = _pydantic_type(typing.get_args(annotation)[0])
        return Annotated[tuple[inner, ...], pydantic.BeforeValidator(_as_tuple)]
    if annotation is float:
        return Annotated[float, pydantic.BeforeValidator(_yaml11_float)]
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
    except pydantic.ValidationError:
        name = _type_name(_annotation(key))
        return value, f"expected {name}, got {value!r} ({type(value).__name__})"
    choices = CHOICES.get(key)
    if choices and typed is not None and typed not in choices:
        return value, f"unknown value {typed!r}; choices: {', '.join(choices)}{_suggest(typed, choices)}"
    return typed, None


# --- the resolved config and its identity ------------------------------------------------------------------

@dataclass(frozen=True)
class RunConfig:
    """The full resolved config of one variant: what gets recorded, and (its identity part) hashed.

    ``data_sha256`` is the sha256 of the data's bytes, filled by ``expand``; when None, ``config_hash``
    reads the file itself (catalog corpora are known by their catalog sha256 and need no file).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data_sha256: str | None = None

    def flat(self) -> dict[str, Any]:
        """``{'model.kind': 'bigram', ...}``; tuples become lists."""
        out = {}
        for section in SECTIONS:
            for key, value in asdict(getattr(self, section)).items():
                out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    def nested(self) -> dict[str, dict[str, Any]]:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in self.flat().items():
            section, name = key.split(".")
            nested.setdefault(section, {})[name] = value
        return nested

    def data_content_sha256(self) -> str:
        if self.data_sha256 is not None:
            return self.data_sha256
        data = self.data.resolved()
        if data.dataset in CATALOG:
            return CATALOG[data.dataset].sha256  # verified against the file whenever it is loaded
        return content_sha256(data, None)

    def identity(self) -> dict[str, Any]:
        """What the hash covers (see the module docstring); ``data.path`` becomes ``data.sha256``."""
        out: dict[str, Any] = {}
        data = self.data.resolved()
        for key, value in {**self.flat(), **{f"data.{k}": v for k, v in asdict(data).items()}}.items():
            meta = _field(key).metadata
            if not meta.get("identity", True):
                continue
            if "kinds" in meta and self.model.kind not in meta["kinds"]:
                continue
            typed, problem = type_value(key, value)
            value = value if problem else typed  # 1 and 1.0 hash the same for a number field
            if meta.get("since", 1) > 1 and value == default_of(key):
                continue
            if key == "data.path":
                key, value = "data.sha256", self.data_content_sha256()
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def config_hash(self) -> str:
        """Identity of a variant for resume and for the `config_hash` tag: same hash, same training."""
        canonical = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def legacy_hash(self) -> str | None:
        """The version-1 hash (the flat config as written, execution keys included), for runs recorded before
        version 2; None when no version-1 run could have trained this config (a later key off its default,
        a GPT, or a split other than the position split that version 1 always used)."""
        if self.model.kind not in V1_MODEL_KINDS or self.data.resolved().split != "position":
            return None
        flat = self.flat()
        for key, value in flat.items():
            meta = _field(key).metadata
            if "kinds" in meta and self.model.kind not in meta["kinds"]:
                continue  # e.g. a GPT size in the base of a spec whose bigram rung this is
            if meta.get("since", 1) > 1 and key != "data.split" and value != _plain(default_of(key)):
                return None
        flat.update(V1_DEFAULTS)
        if self.train.eval_interval is not None:
            flat["train.eval_interval"] = self.train.eval_interval
        flat["data.dataset"] = FILE_DATASET if self.data.dataset is None and self.data.path is not None else self.data.dataset
        v1 = {key: flat[key] for key in V1_KEYS}
        return hashlib.sha256(json.dumps(v1, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.nested(), sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Variant:
    """One point of the grid: an id for humans, its axis values (level names for named axes), the config.

    ``legacy_hash`` is the identity-version-1 hash of the same config, for matching runs recorded before
    version 2 (None when none can match). ``origins`` says where in the spec each set key came from.
    """

    id: str
    axes: dict[str, Any]
    config: RunConfig
    legacy_hash: str | None = None
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def where(self, key: str) -> str:
        """``file:line:column`` (or ``override k=v``, or ``defaults``) of a dotted key of this variant."""
        return self.origins.get(key, "defaults")


@dataclass(frozen=True)
class Reference:
    """A published number: the variants it is about (``match``), a runs.csv metric, its value and source."""

    match: dict[str, Any]
    metric: str
    value: float
    source: str

    def matches(self, variant: Variant) -> bool:
        for key, wanted in self.match.items():
            if "." not in key:
                if variant.axes.get(key) != wanted:
                    return False
            else:
                section, name = key.split(".")
                config = variant.config.data.resolved() if section == "data" else getattr(variant.config, section)
                if getattr(config, name) != wanted:
                    return False
        return True


# --- the spec -----------------------------------------------------------------------------------------------

@dataclass
class Spec:
    """A parsed, typed spec. ``grid`` keeps the written order; a named axis maps to its level names there,
    and its settings are in ``levels[axis][level]`` (dotted key -> typed value)."""

    path: Path
    name: str
    description: str
    base: dict[str, Any]  # dotted key -> typed value
    grid: dict[str, list]
    zip_groups: list[dict[str, list]]
    exclude: list[dict[str, Any]]
    seeds: list[int]
    levels: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    references: list[Reference] = field(default_factory=list)
    marks: dict[tuple, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def named_axes(self) -> dict[str, list[str]]:
        return {axis: list(levels) for axis, levels in self.levels.items()}

    @property
    def axis_keys(self) -> list[str]:
        keys = list(self.grid)
        for group in self.zip_groups:
            keys += list(group)
        if self.seeds:
            keys.append(SEED_KEY)
        return keys

    def where(self, *path) -> str:
        """``file:line:column`` of a node (the nearest one written), for messages."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.marks:
                return self.marks[path[:end]]
        return f"{self.path}"


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, str]]:
    """``yaml.safe_load`` of the file, and ``file:line:column`` of every key and item (by their path)."""
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    raw = path.read_bytes()
    utf16_mark = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
    if utf16_mark or b"\x00" in raw:
        why = "it starts with a UTF-16 byte-order mark" if utf16_mark else "it has NUL bytes, as UTF-16 text does"
        raise SpecError(f"{path}: UTF-16 text, not UTF-8 ({why}); save the spec as UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_column(raw, exc.start)
        raise SpecError(f"{path}:{line}:{column}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "save the spec as UTF-8 (an editor's 'Save with encoding', or iconv -f cp949 -t utf-8)") from exc
    text = text.removeprefix("\ufeff")
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character first: a control character raises here
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        marks: dict[tuple, str] = {}
        if node is not None:
            _collect_marks(loader, node, (), path, marks)
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        raise SpecError(f"{path}:{line}:{column}: invalid YAML: character #x{exc.character:04x} (a control character) "
                        "is not allowed; delete it") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}{at}: invalid YAML{line}: {problem}") from exc
    finally:
        if loader is not None:
            loader.dispose()
    return data, marks


def _line_column(text: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text`` (characters of a str, bytes of bytes)."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return text.count(newline, 0, offset) + 1, offset - (text.rfind(newline, 0, offset) + 1) + 1


def _collect_marks(loader, node, prefix: tuple, path: Path, marks: dict) -> None:
    def at(mark) -> str:
        return f"{path}:{mark.line + 1}:{mark.column + 1}"

    if isinstance(node, yaml.MappingNode):
        first_seen: dict[Any, yaml.Mark] = {}  # yaml.safe_load would keep a repeated key's last value silently
        for key_node, value_node in node.value:
            try:
                key = loader.construct_object(key_node, deep=True)
                hash(key)
            except Exception:  # an unhashable key: reported as a bad key, located by its parent
                continue
            if key in first_seen:
                dotted = ".".join(str(k) for k in prefix + (key,))
                raise SpecError(f"{at(key_node.start_mark)}: {dotted}: duplicate key (first at line "
                                f"{first_seen[key].line + 1}); keep one")
            first_seen[key] = key_node.start_mark
            marks[prefix + (key,)] = at(value_node.start_mark)
            marks[prefix + (key, "<key>")] = at(key_node.start_mark)
            _collect_marks(loader, value_node, prefix + (key,), path, marks)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            marks[prefix + (i,)] = at(item.start_mark)
            _collect_marks(loader, item, prefix + (i,), path, marks)


class _Problems:
    """Collects ``where: key: message`` lines instead of stopping at the first."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.lines: list[str] = []
        self.keys: set[str] = set()  # keys with a problem already: a later check on them would only echo it
        self.line_keys: list[str] = []

    def at(self, path: tuple, key: str, message: str) -> None:
        self.add(self.spec.where(*path), key, message)

    def key(self, path: tuple, key: str, message: str) -> None:
        """A problem with a mapping key itself: located at the key, not its value."""
        self.add(self.spec.where(*path, "<key>") if path + ("<key>",) in self.spec.marks else self.spec.where(*path),
                 key, message)

    def add(self, where: str, key: str, message: str) -> None:
        self.keys.add(key)
        self.line_keys.append(key)
        self.lines.append(f"{where}: {key}: {message}" if key else f"{where}: {message}")


def load_spec(path: str | Path) -> Spec:
    """Parse, type and check a spec, expanding it once as written, and report every problem at once."""
    path = Path(path)
    raw, marks = _read_yaml(path)
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a spec needs at least 'name' and 'base'")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping of {', '.join(TOP_LEVEL_KEYS)}; got a {type(raw).__name__}")
    spec = Spec(path, "", "", {}, {}, [], [], [], marks=marks)
    problems = _Problems(spec)

    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            problems.key((key,), str(key), f"unknown top-level key {key!r}; valid keys: "
                         f"{', '.join(TOP_LEVEL_KEYS)}{_suggest(key, TOP_LEVEL_KEYS)}")
    if "name" not in raw:
        problems.add(f"{path}:1:1", "name", "missing 'name' (the MLflow experiment name and the results/ folder)")
    elif not isinstance(raw["name"], str):
        problems.at(("name",), "name", f"expected a string, got {raw['name']!r} ({type(raw['name']).__name__})")
    elif not re.fullmatch(NAME_PATTERN, raw["name"]):
        problems.at(("name",), "name", f"{raw['name']!r}: use letters, digits and -_. only, starting with a letter "
                    "or digit (it names a folder under results/)")
    else:
        spec.name = raw["name"]
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        problems.at(("description",), "description", f"expected a string, got {description!r}")
    else:
        spec.description = description or ""

    spec.base = _parse_base(raw.get("base"), problems)
    _parse_grid(raw.get("grid"), spec, problems)
    _parse_zip(raw.get("zip"), spec, problems)
    _parse_seeds(raw.get("seeds"), spec, problems)
    _check_axis_conflicts(spec, problems)
    _parse_exclude(raw.get("exclude"), spec, problems)
    raw_references = raw.get("references")
    _parse_references(raw_references, spec, problems)

    # The values of every variant, as written (keys already reported are not reported again), and the
    # variants that the references select.
    variants, found = _expand(spec, {}, None, known=problems.keys)
    problems.lines += found
    if not found:
        for i, reference in enumerate(spec.references):
            if variants and not any(reference.matches(v) for v in variants):
                problems.at(("references", i, "match"), f"references[{i}].match",
                            f"{reference.match} selects no variant of the spec")
    if problems.lines:
        raise SpecError(sorted(problems.lines, key=_line_order))
    return spec


def _line_order(line: str) -> tuple:
    """Problems in the order of the file: by line, then column (lines without a position last)."""
    found = re.match(r".*?:(\d+):(\d+): ", line)
    return (int(found[1]), int(found[2])) if found else (1 << 30, 0)


def _parse_base(raw: Any, problems: _Problems) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if raw is None:
        return base
    if not isinstance(raw, dict):
        problems.at(("base",), "base", f"expected a mapping of sections ({', '.join(SECTIONS)}), got {raw!r}")
        return base
    for section, values in raw.items():
        if section not in SECTIONS:
            problems.key(("base", section), f"base.{section}", f"unknown section {section!r}; choices: "
                         f"{', '.join(SECTIONS)}{_suggest(section, SECTIONS)}")
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.at(("base", section), f"base.{section}", f"expected a mapping of keys, got {values!r}")
            continue
        for name, value in values.items():
            dotted = f"{section}.{name}"
            bad_key = key_problem(dotted)
            if bad_key:
                problems.key(("base", section, name), dotted, bad_key)
                continue
            typed, bad_value = type_value(dotted, value)
            if bad_value:
                problems.at(("base", section, name), dotted, bad_value)
            else:
                base[dotted] = typed
    return base


def _typed_list(values: Any, key: str, path: tuple, problems: _Problems) -> list | None:
    """A grid or zip list, each item typed; None (after reporting) when it is not a non-empty list."""
    if not isinstance(values, list) or not values:
        problems.at(path, key, f"an axis of {path[0]} must be a non-empty list of values, got {values!r}")
        return None
    out = []
    for i, value in enumerate(values):
        typed, bad = type_value(key, value)
        if bad:
            problems.at(path + (i,), key, bad)
        out.append(typed)
    return out


def _parse_grid(raw: Any, spec: Spec, problems: _Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.at(("grid",), "grid", f"expected a mapping of dotted key -> list of values, got {raw!r}")
        return
    for key, values in raw.items():
        if isinstance(key, str) and "." not in key and isinstance(values, dict):
            _parse_named_axis(key, values, spec, problems)
            continue
        bad_key = key_problem(key)
        if bad_key:
            problems.key(("grid", key), str(key), bad_key + " (or a named axis: a name without a dot "
                         "whose value is a mapping of level name -> settings)")
            continue
        typed = _typed_list(values, key, ("grid", key), problems)
        if typed is not None:
            spec.grid[key] = typed


def _parse_named_axis(axis: str, raw_levels: dict, spec: Spec, problems: _Problems) -> None:
    path = ("grid", axis)
    if not re.fullmatch(AXIS_NAME_PATTERN, axis):
        problems.key(path, axis, "a named axis is a word of letters, digits, _ and -")
    if not raw_levels:
        problems.at(path, axis, "a named axis needs at least one level (level name -> settings)")
        return
    levels: dict[str, dict[str, Any]] = {}
    for level, settings in raw_levels.items():
        where = path + (level,)
        if not isinstance(level, str) or not re.fullmatch(NAME_PATTERN, level):
            problems.key(where, axis, f"level name {level!r}: use letters, digits and -_.")
            continue
        settings = {} if settings is None else settings  # an empty level: the base as it is
        if not isinstance(settings, dict):
            problems.at(where, f"{axis}.{level}", f"expected a mapping of dotted key -> value, got {settings!r}")
            continue
        levels[level] = {}
        for key, value in settings.items():
            bad_key = key_problem(key)
            if bad_key:
                problems.key(where + (key,), str(key), bad_key)
                continue
            typed, bad = type_value(key, value)
            if bad:
                problems.at(where + (key,), key, bad)
            levels[level][key] = typed
    spec.levels[axis] = levels
    spec.grid[axis] = list(levels)


def _parse_zip(raw: Any, spec: Spec, problems: _Problems) -> None:
    if raw is None:
        return
    groups = [raw] if isinstance(raw, dict) else raw
    if not isinstance(groups, list):
        problems.at(("zip",), "zip", f"expected a list of groups (mappings of dotted key -> list), got {raw!r}")
        return
    for i, group in enumerate(groups):
        path = ("zip",) if isinstance(raw, dict) else ("zip", i)
        if not isinstance(group, dict) or not group:
            problems.at(path, f"zip[{i}]", f"expected a mapping of dotted key -> list, got {group!r}")
            continue
        typed_group = {}
        for key, values in group.items():
            bad_key = key_problem(key)
            if bad_key:
                problems.key(path + (key,), str(key), bad_key)
                continue
            typed = _typed_list(values, key, path + (key,), problems)
            if typed is not None:
                typed_group[key] = typed
        lengths = {len(v) for v in typed_group.values()}
        if len(lengths) > 1:
            problems.at(path, f"zip[{i}]", f"lists must have the same length, got lengths {sorted(lengths)}")
            continue
        spec.zip_groups.append(typed_group)


def _parse_seeds(raw: Any, spec: Spec, problems: _Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("seeds",), "seeds", f"expected a list of integers, got {raw!r}")
        return
    for i, seed in enumerate(raw):
        if not isinstance(seed, int) or isinstance(seed, bool):
            problems.at(("seeds", i), "seeds", f"expected integers, got {seed!r}")
        elif seed in spec.seeds:
            problems.at(("seeds", i), "seeds", f"seed {seed} is repeated")
        else:
            spec.seeds.append(seed)


def _check_axis_conflicts(spec: Spec, problems: _Problems) -> None:
    """Each dotted key is varied in one place: a grid axis, one zip group, one named axis, or seeds."""
    owner: dict[str, str] = {}

    def claim(key: str, by: str, path: tuple) -> None:
        if key in owner and owner[key] != by:
            problems.key(path, key, f"is varied by {owner[key]} and by {by}; put it in one place")
        owner.setdefault(key, by)

    for key in spec.grid:
        if key not in spec.levels:
            claim(key, "grid", ("grid", key))
    for axis, levels in spec.levels.items():
        for level, settings in levels.items():
            for key in settings:
                claim(key, f"named axis {axis!r}", ("grid", axis, level, key))
    for i, group in enumerate(spec.zip_groups):
        for key in group:
            claim(key, f"zip group {i}", ("zip", i, key))
    if spec.seeds:
        claim(SEED_KEY, "seeds", ("seeds",))


def _parse_exclude(raw: Any, spec: Spec, problems: _Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("exclude",), "exclude", f"expected a list of partial assignments, got {raw!r}")
        return
    axes = [k for k in spec.axis_keys]
    for i, entry in enumerate(raw):
        path = ("exclude", i)
        if not isinstance(entry, dict) or not entry:
            problems.at(path, f"exclude[{i}]", f"expected a mapping of axis -> value, got {entry!r}")
            continue
        typed_entry = {}
        for key, value in entry.items():
            if key not in axes:
                problems.key(path + (key,), str(key), f"{key} is not an axis of grid, zip or seeds; axes: "
                             f"{', '.join(map(str, axes)) or 'none'}{_suggest(key, axes)}")
                continue
            if key in spec.levels:
                if value not in spec.levels[key]:
                    problems.at(path + (key,), key, f"unknown level {value!r}; levels: "
                                f"{', '.join(spec.levels[key])}{_suggest(value, spec.levels[key])}")
                    continue
                typed_entry[key] = value
                continue
            typed, bad = type_value(key, value)
            if bad:
                problems.at(path + (key,), key, bad)
                continue
            typed_entry[key] = typed
        spec.exclude.append(typed_entry)


def _parse_references(raw: Any, spec: Spec, problems: _Problems) -> None:
    if raw is None:
        return
    if not isinstance(raw, list):
        problems.at(("references",), "references", "expected a list of {match, metric, value, source}")
        return
    for i, entry in enumerate(raw):
        path, name = ("references", i), f"references[{i}]"
        if not isinstance(entry, dict):
            problems.at(path, name, f"expected a mapping with {', '.join(REFERENCE_KEYS)}, got {entry!r}")
            continue
        ok = True
        for key in entry:
            if key not in REFERENCE_KEYS:
                problems.key(path + (key,), f"{name}.{key}", f"unknown key {key!r}; valid keys: "
                             f"{', '.join(REFERENCE_KEYS)}{_suggest(key, REFERENCE_KEYS)}")
                ok = False
        for key in REFERENCE_KEYS:
            if key not in entry:
                problems.at(path, name, f"missing {key!r}")
                ok = False
        metric, value, source = entry.get("metric"), entry.get("value"), entry.get("source")
        if "metric" in entry and metric not in REFERENCE_METRICS:
            problems.at(path + ("metric",), f"{name}.metric", f"unknown metric {metric!r}; choices: "
                        f"{', '.join(REFERENCE_METRICS)}{_suggest(metric, REFERENCE_METRICS)}")
            ok = False
        value = _yaml11_float(value)
        if "value" in entry and (isinstance(value, bool) or not isinstance(value, (int, float))):
            problems.at(path + ("value",), f"{name}.value", f"expected a number, got {value!r}")
            ok = False
        if "source" in entry and (not isinstance(source, str) or not source.strip()):
            problems.at(path + ("source",), f"{name}.source", "expected a text saying where the number comes from")
            ok = False
        match = _parse_match(entry.get("match"), spec, path + ("match",), f"{name}.match", problems)
        if ok and match is not None:
            spec.references.append(Reference(match, metric, float(value), source))


def _parse_match(raw: Any, spec: Spec, path: tuple, name: str, problems: _Problems) -> dict | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.at(path, name, f"expected a mapping of axis or dotted key -> value, got {raw!r}")
        return None
    match = {}
    for key, value in raw.items():
        if isinstance(key, str) and "." not in key:
            if key not in spec.levels:
                named = list(spec.levels)
                problems.key(path + (key,), key, f"is not a named axis; named axes: {', '.join(named) or 'none'}"
                             f"{_suggest(key, named)} (or use a dotted key like data.dataset)")
            elif value not in spec.levels[key]:
                problems.at(path + (key,), key, f"unknown level {value!r}; levels: "
                            f"{', '.join(spec.levels[key])}{_suggest(value, spec.levels[key])}")
            else:
                match[key] = value
            continue
        bad_key = key_problem(key)
        if bad_key:
            problems.key(path + (key,), str(key), bad_key)
            continue
        typed, bad = type_value(key, value)
        if bad:
            problems.at(path + (key,), key, bad)
            continue
        match[key] = typed
    return match if len(match) == len(raw) else None


def with_seeds(spec: Spec, seeds: list[int] | None) -> Spec:
    """The spec with its ``seeds`` replaced (the CLI's ``--seeds``); None keeps the file's."""
    if seeds is None:
        return spec
    varied = SEED_KEY in spec.grid or any(SEED_KEY in g for g in spec.zip_groups) or any(
        SEED_KEY in settings for levels in spec.levels.values() for settings in levels.values())
    if varied:
        raise SpecError(f"{spec.path}: --seeds conflicts with the spec's own axis over {SEED_KEY}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"--seeds: repeated seed in {seeds}")
    return replace(spec, seeds=list(seeds))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['train.steps=200']`` -> ``{'train.steps': 200}``; values are YAML scalars, typed in ``expand``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"override {item!r}: expected key=value, e.g. train.steps=200")
        key, text = item.split("=", 1)
        check_dotted_key(key.strip(), f"override {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return out


# --- expansion ----------------------------------------------------------------------------------------------

def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def _short_labels(keys: list[str]) -> dict[str, str]:
    """Axis labels for variant ids: the field name (a named axis: its name), or the dotted key where two share it."""
    names = [k.split(".")[-1] for k in keys]
    return {k: (k.split(".")[-1] if names.count(k.split(".")[-1]) == 1 else k) for k in keys}


def variant_id(axes: dict[str, Any]) -> str:
    labels = _short_labels(list(axes))
    return ",".join(f"{labels[k]}={_format_value(v)}" for k, v in axes.items()) or "base"


def expand(spec: Spec, overrides: dict[str, Any] | None = None, data_dir: Path | None = None) -> list[Variant]:
    """All variants of a spec: grid x named axes x zip groups x seeds, minus excludes, with overrides applied.

    Each variant's ``config.data_sha256`` is the sha256 of its data file, read here, so that
    ``variant.config.config_hash()`` needs nothing else; a catalog corpus is known by its catalog sha256
    (checked whenever the file is loaded). With a ``data_dir`` (``--data-dir``/``HARNESS_DATA_DIR``), each
    catalog corpus used is also checked there now, so a missing or wrong file is reported at the spec line
    that asks for it; without one nothing is downloaded here. A ``data.path`` is read as written (relative
    to the working folder).
    """
    variants, problems = _expand(spec, overrides or {}, data_dir)
    if problems:
        raise SpecError(problems)
    return variants


def _override_where(key: str, value: Any) -> str:
    return f"override {key}={_format_value(value)}"


def _expand(spec: Spec, overrides: dict[str, Any], data_dir: Path | None,
            known: set[str] = frozenset()) -> tuple[list[Variant], list[str]]:
    problems = _Problems(spec)
    problems.keys.update(known)
    typed_overrides: dict[str, Any] = {}
    for key, value in overrides.items():
        bad_key = key_problem(key)
        typed, bad = (value, bad_key) if bad_key else type_value(key, value)
        if bad:
            problems.add(_override_where(key, value), key, bad)
        else:
            typed_overrides[key] = typed

    # Each axis is a list of points: (axis value for the id, {dotted key: (typed value, where)}).
    axes: list[list[tuple[dict[str, Any], dict[str, tuple[Any, str]]]]] = []
    for key, values in spec.grid.items():
        if key in spec.levels:
            axes.append([({key: level}, {k: (v, spec.where("grid", key, level, k)) for k, v in settings.items()})
                         for level, settings in spec.levels[key].items()])
        elif key not in typed_overrides:
            axes.append([({key: v}, {key: (v, spec.where("grid", key, i))}) for i, v in enumerate(values)])
    for g, group in enumerate(spec.zip_groups):
        kept = {k: v for k, v in group.items() if k not in typed_overrides}
        if kept:
            length = len(next(iter(kept.values())))
            axes.append([({k: vals[i] for k, vals in kept.items()},
                          {k: (vals[i], spec.where("zip", g, k, i)) for k, vals in kept.items()}) for i in range(length)])
    if spec.seeds and SEED_KEY not in typed_overrides:
        axes.append([({SEED_KEY: s}, {SEED_KEY: (s, spec.where("seeds", i))}) for i, s in enumerate(spec.seeds)])

    base = {k: (v, spec.where("base", *k.split("."))) for k, v in spec.base.items()}
    fixed = {k: (v, _override_where(k, overrides[k])) for k, v in typed_overrides.items()}
    fallback = spec.where("base") if ("base",) in spec.marks else f"{spec.path}:1:1"  # for defaults
    variants: list[Variant] = []
    clean: list[Variant] = []
    off_kind: dict[str, tuple[str, set]] = {}  # key set in base/overrides -> (where, kinds of variants)
    catalog_checked: dict[str, str | None] = {}  # dataset -> its problem in data_dir, if any
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        assignments = dict(base)
        for axis_values, settings in combo:
            point.update(axis_values)
            assignments.update(settings)
        assignments.update(fixed)
        if any(_excluded(entry, point, assignments) for entry in spec.exclude):
            continue
        before = len(problems.lines)
        vid = variant_id(point)
        config = _build_config(assignments, problems, fallback)
        kind = config.model.kind
        for key, (value, where) in assignments.items():
            kinds = _field(key).metadata.get("kinds")
            if not kinds or value == default_of(key):
                continue
            if key in base or key in fixed:
                off_kind.setdefault(key, (where, set()))[1].add(kind)
            elif kind not in kinds:
                problems.add(where, key, f"applies to model.kind {', '.join(kinds)} only, not {kind!r} "
                             f"(variant {vid}); set it in the levels of that kind, or exclude this combination")
        if config.data.dataset == FILE_DATASET and config.data.path is not None:
            try:
                config = replace(config, data_sha256=content_sha256(config.data, data_dir))
            except (DataError, OSError) as exc:
                problems.add(assignments.get("data.path", (None, fallback))[1], "data.path",
                             str(exc).removeprefix("data.path: "))
        elif config.data.dataset in CATALOG and data_dir is not None:
            if config.data.dataset not in catalog_checked:
                try:
                    locate_catalog_file(config.data.dataset, data_dir)
                    catalog_checked[config.data.dataset] = None
                except DataError as exc:
                    catalog_checked[config.data.dataset] = str(exc)
            if catalog_checked[config.data.dataset]:
                problems.add(assignments.get("data.dataset", (None, fallback))[1], "data.dataset",
                             catalog_checked[config.data.dataset])
        variant = Variant(vid, point, config, None, {k: where for k, (_, where) in assignments.items()})
        if len(problems.lines) == before:
            variant = replace(variant, legacy_hash=config.legacy_hash())
            clean.append(variant)
        variants.append(variant)

    for key, (where, kinds_seen) in off_kind.items():
        kinds = _field(key).metadata["kinds"]
        if not kinds_seen & set(kinds):
            problems.add(where, key, f"applies to model.kind {', '.join(kinds)} only, and no variant has that "
                         f"kind (they have {', '.join(sorted(kinds_seen))})")
    _check_duplicates(spec, clean, problems)
    if not variants and not problems.lines:
        problems.add(str(spec.path), "exclude", "every variant is excluded; nothing to run")
    return variants, [line for line, key in zip(problems.lines, problems.line_keys) if key not in known]


def _excluded(entry: dict[str, Any], point: dict[str, Any], assignments: dict[str, tuple[Any, str]]) -> bool:
    """Typed comparison: ``train.lr: 1e-3`` excludes the variants whose learning rate is 0.001."""
    for key, wanted in entry.items():
        if key in point and "." not in key:
            actual = point[key]
        else:
            actual = assignments[key][0] if key in assignments else default_of(key)
        if actual != wanted:
            return False
    return True


def _build_config(assignments: dict[str, tuple[Any, str]], problems: _Problems, fallback: str) -> RunConfig:
    """Typed config from ``dotted key -> (typed value, where)``; every semantic problem reported at its origin."""
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, (value, _) in assignments.items():
        section, name = key.split(".")
        per_section[section][name] = value
    sections = {s: SECTIONS[s](**per_section[s]) for s in SECTIONS}
    sections["data"] = sections["data"].resolved()
    for section, obj in sections.items():
        for name, problem in obj.problems():
            key = f"{section}.{name}"
            where = assignments.get(key, (None, None))[1]
            if where is None:
                # A default that is wrong for this variant: point at what made it wrong (the section's line).
                where = next((w for k, (_, w) in assignments.items() if k.startswith(f"{section}.")), fallback)
            problems.add(where, key, problem)
    return RunConfig(**sections)


def _check_duplicates(spec: Spec, variants: list[Variant], problems: _Problems) -> None:
    """Two values of one axis that type to the same value, or two variants with one identity, would be one run."""
    found = False
    lists = [(("grid", k), k, v) for k, v in spec.grid.items() if k not in spec.levels]
    lists += [(("zip", g, k), k, v) for g, group in enumerate(spec.zip_groups) for k, v in group.items()]
    for path, key, values in lists:
        for i, value in enumerate(values):
            if value in values[:i]:
                first = values.index(value)
                problems.at(path + (i,), key, f"duplicate value: {value!r} is item {first + 1} again once typed "
                            f"(for a number field 1 and 1.0 are one number); remove one")
                found = True
    if found:
        return
    seen: dict[str, Variant] = {}
    reported: set[str] = set()
    for variant in variants:
        digest = variant.config.config_hash()
        first = seen.setdefault(digest, variant)
        if first is variant:
            continue
        differing = [k for k in variant.origins if variant.origins[k] != first.origins.get(k)]
        key = differing[0] if differing else next(iter(variant.axes), "")
        where = variant.origins.get(key, "defaults")
        if where in reported:
            continue
        reported.add(where)
        execution = [k for k in differing if not is_identity(k)]
        why = f"; they differ only in execution keys ({', '.join(execution)})" if execution == differing else ""
        problems.add(where, key, f"duplicate variant: {variant.id!r} is the same run as {first.id!r} "
                     f"(identity {digest}{why}); remove the value or exclude the combination")


# --- JSON Schema ------------------------------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "experiments" / "spec.schema.json"


def _yaml11_numbers(schema: Any) -> Any:
    """A number may also be written ``1e-3``, which YAML 1.1 (PyYAML) reads as a string."""
    if isinstance(schema, dict):
        if schema.get("type") == "number":
            return {"anyOf": [{"type": "number"}, {"type": "string", "pattern": f"^{_NUMBER.pattern}$"}]}
        return {k: _yaml11_numbers(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_yaml11_numbers(v) for v in schema]
    return schema


def _key_schema(key: str) -> dict[str, Any]:
    schema = _yaml11_numbers(_adapter(key).json_schema())
    schema.pop("title", None)
    if key in CHOICES:
        nullable = "anyOf" in schema
        schema = {"enum": [*CHOICES[key], *([None] if nullable else [])]}
    meta = _field(key).metadata
    notes = []
    if not meta.get("identity", True):
        notes.append("execution only: not part of the run's identity")
    if "kinds" in meta:
        notes.append(f"model.kind {', '.join(meta['kinds'])} only")
    default = default_of(key)
    schema["default"] = _plain(default)
    if notes:
        schema["description"] = "; ".join(notes)
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec, for editors (``# yaml-language-server: $schema=spec.schema.json``)."""
    keys = all_dotted_keys()
    definitions = {k: _key_schema(k) for k in keys}
    values = {k: {"$ref": f"#/$defs/{k}"} for k in keys}  # each key's schema once, used by base, grid, zip
    settings = {"type": "object", "properties": values, "additionalProperties": False}
    axis_values = {k: {"type": "array", "minItems": 1, "items": v} for k, v in values.items()}
    named_axis = {
        "type": "object", "minProperties": 1,
        "description": "a named axis: level name -> settings (dotted key -> value), levels in the order written",
        "additionalProperties": settings,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nanoko-harness experiment spec",
        "$defs": definitions,
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": f"^{NAME_PATTERN}$",
                     "description": "MLflow experiment and results/<name>/ folder"},
            "description": {"type": "string"},
            "base": {
                "type": "object", "additionalProperties": False,
                "properties": {
                    section: {
                        "type": "object", "additionalProperties": False,
                        "properties": {f.name: values[f"{section}.{f.name}"] for f in fields(cls)},
                    }
                    for section, cls in SECTIONS.items()
                },
            },
            "grid": {
                "type": "object",
                "description": "dotted key -> list of values (full cartesian product), or a named axis",
                "properties": axis_values,
                "patternProperties": {f"^{AXIS_NAME_PATTERN}$": named_axis},
                "additionalProperties": False,
            },
            "zip": {
                "description": "groups of equally long lists varied together",
                "anyOf": [
                    {"type": "object", "properties": axis_values, "additionalProperties": False},
                    {"type": "array", "items": {"type": "object", "properties": axis_values,
                                                "additionalProperties": False}},
                ],
            },
            "exclude": {"type": "array", "items": {"type": "object", "minProperties": 1},
                        "description": "partial assignments (axis -> value or level name) to drop"},
            "seeds": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "references": {
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": False, "required": list(REFERENCE_KEYS),
                    "properties": {
                        "match": {"type": "object", "description": "named axis -> level, or dotted key -> value"},
                        "metric": {"enum": list(REFERENCE_METRICS)},
                        "value": _yaml11_numbers({"type": "number"}),
                        "source": {"type": "string", "minLength": 1},
                    },
                },
            },
        },
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(schema_text(), encoding="utf-8")
    return path
