"""Experiment specs: one YAML file -> validated, typed variants.

A spec has ``name``, ``description``, ``base`` (sections data/model/train/sample), ``grid`` (dotted key ->
values, full cartesian product), ``zip`` (groups of equally long lists varied together), ``exclude``
(partial assignments to drop) and ``seeds`` (every variant repeated per seed). Every problem is a
``SpecError`` naming the file, the key and the valid choices, raised before anything trains.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from harness.data import DataConfig
from harness.models import ModelConfig
from harness.train import SampleConfig, TrainConfig

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}
TOP_LEVEL_KEYS = ("name", "description", "base", "grid", "zip", "exclude", "seeds")
SEED_KEY = "train.seed"


class SpecError(Exception):
    """A spec the user must fix. The CLI prints the message and exits 2, without a traceback."""


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def all_dotted_keys() -> list[str]:
    return [f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)]


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None)) + " or null"
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(annotation, str(annotation))


def coerce(value: Any, annotation, where: str) -> Any:
    """Check ``value`` against a field's type; ints pass as floats, ``1e-3`` strings as numbers."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{where}: expected a {_type_name(annotation)}, got {value!r}")
        inner = typing.get_args(annotation)[0]
        return tuple(coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise SpecError(f"{where}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


def check_dotted_key(key: Any, where: str) -> tuple[str, str]:
    """``section.field`` -> (section, field), or a SpecError listing what exists."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise SpecError(f"{where}: {key!r} is not a dotted key like 'train.batch_size'{_suggest(key, all_dotted_keys())}")
    section, name = key.split(".")
    if section not in SECTIONS:
        raise SpecError(f"{where}: unknown section {section!r} in {key!r}; choices: {', '.join(SECTIONS)}{_suggest(section, SECTIONS)}")
    names = [f.name for f in fields(SECTIONS[section])]
    if name not in names:
        raise SpecError(
            f"{where}: unknown key {key!r}; valid keys in {section}: {', '.join(names)}{_suggest(name, names)}"
        )
    return section, name


@dataclass(frozen=True)
class RunConfig:
    """The full resolved config of one variant: what gets recorded and hashed."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

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

    def config_hash(self) -> str:
        """Identity of a variant for resume: same hash, same training."""
        canonical = json.dumps(self.flat(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.nested(), sort_keys=False, allow_unicode=True)


def build_config(assignments: dict[str, tuple[Any, str]]) -> RunConfig:
    """Typed config from ``dotted key -> (value, where it came from)``; semantic checks included."""
    per_section: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, (value, where) in assignments.items():
        section, name = check_dotted_key(key, where)
        per_section[section][name] = coerce(value, _field_types(SECTIONS[section])[name], f"{where}: {key}")
    sections = {s: SECTIONS[s](**per_section[s]) for s in SECTIONS}
    sections["data"] = sections["data"].resolved()
    for section, obj in sections.items():
        for name, problem in obj.problems():
            key = f"{section}.{name}"
            origin = assignments.get(key, (None, "defaults"))[1]
            raise SpecError(f"{origin}: {key} {problem}")
    return RunConfig(**sections)


@dataclass(frozen=True)
class Variant:
    """One point of the grid: an id for humans, its axis values, and the resolved config."""

    id: str
    axes: dict[str, Any]
    config: RunConfig


@dataclass
class Spec:
    path: Path
    name: str
    description: str
    base: dict[str, Any]  # dotted key -> value
    grid: dict[str, list]
    zip_groups: list[dict[str, list]]
    exclude: list[dict[str, Any]]
    seeds: list[int]

    @property
    def axis_keys(self) -> list[str]:
        keys = list(self.grid)
        for group in self.zip_groups:
            keys += list(group)
        if self.seeds:
            keys.append(SEED_KEY)
        return keys


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: invalid YAML{at}: {problem}") from exc


def _expect(value: Any, kind: type, where: str, what: str):
    if not isinstance(value, kind):
        raise SpecError(f"{where}: expected {what}, got {value!r} ({type(value).__name__})")
    return value


def load_spec(path: str | Path) -> Spec:
    """Parse and check a spec's structure (keys, types); values are checked per variant in ``expand``."""
    path = Path(path)
    raw = _read_yaml(path)
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a spec needs at least 'name' and 'base'")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a mapping of {', '.join(TOP_LEVEL_KEYS)}; got a {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise SpecError(f"{path}: unknown top-level key {key!r}; valid keys: {', '.join(TOP_LEVEL_KEYS)}{_suggest(key, TOP_LEVEL_KEYS)}")
    if "name" not in raw:
        raise SpecError(f"{path}: missing 'name' (the MLflow experiment name)")
    name = _expect(raw["name"], str, f"{path}: name", "a string")
    description = _expect(raw.get("description") or "", str, f"{path}: description", "a string")

    base: dict[str, Any] = {}
    for section, values in _expect(raw.get("base") or {}, dict, f"{path}: base", "a mapping of sections").items():
        if section not in SECTIONS:
            raise SpecError(f"{path}: base: unknown section {section!r}; choices: {', '.join(SECTIONS)}{_suggest(section, SECTIONS)}")
        for key, value in _expect(values or {}, dict, f"{path}: base.{section}", "a mapping").items():
            dotted = f"{section}.{key}"
            check_dotted_key(dotted, f"{path}: base")
            base[dotted] = value

    grid = _expect(raw.get("grid") or {}, dict, f"{path}: grid", "a mapping of dotted key -> list of values")
    for key, values in grid.items():
        check_dotted_key(key, f"{path}: grid")
        if not isinstance(values, list) or not values:
            raise SpecError(f"{path}: grid: {key} must be a non-empty list of values, got {values!r}")

    raw_zip = raw.get("zip") or []
    groups = [raw_zip] if isinstance(raw_zip, dict) else _expect(raw_zip, list, f"{path}: zip", "a list of groups")
    zip_groups = []
    for i, group in enumerate(groups):
        where = f"{path}: zip[{i}]"
        _expect(group, dict, where, "a mapping of dotted key -> list")
        lengths = set()
        for key, values in group.items():
            check_dotted_key(key, where)
            if key in grid:
                raise SpecError(f"{where}: {key} is also in grid; put it in one place")
            if not isinstance(values, list) or not values:
                raise SpecError(f"{where}: {key} must be a non-empty list, got {values!r}")
            lengths.add(len(values))
        if len(lengths) > 1:
            raise SpecError(f"{where}: lists must have the same length, got lengths {sorted(lengths)}")
        zip_groups.append(group)

    exclude = _expect(raw.get("exclude") or [], list, f"{path}: exclude", "a list of partial assignments")
    axis_keys = list(grid) + [k for g in zip_groups for k in g]
    for i, entry in enumerate(exclude):
        where = f"{path}: exclude[{i}]"
        _expect(entry, dict, where, "a mapping of dotted key -> value")
        for key in entry:
            check_dotted_key(key, where)
            if key not in axis_keys and key != SEED_KEY:
                raise SpecError(f"{where}: {key} is not an axis of grid or zip; axes: {', '.join(axis_keys) or 'none'}")

    seeds = _expect(raw.get("seeds") or [], list, f"{path}: seeds", "a list of integers")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise SpecError(f"{path}: seeds: expected integers, got {seed!r}")
    if seeds and (SEED_KEY in grid or any(SEED_KEY in g for g in zip_groups)):
        raise SpecError(f"{path}: seeds and an axis over {SEED_KEY} both set; use one")
    return Spec(path, name, description, base, grid, zip_groups, exclude, seeds)


def with_seeds(spec: Spec, seeds: list[int] | None) -> Spec:
    """The spec with its ``seeds`` replaced (the CLI's ``--seeds``); None keeps the file's."""
    if seeds is None:
        return spec
    if SEED_KEY in spec.grid or any(SEED_KEY in g for g in spec.zip_groups):
        raise SpecError(f"{spec.path}: --seeds conflicts with the spec's own axis over {SEED_KEY}")
    if len(set(seeds)) != len(seeds):
        raise SpecError(f"--seeds: repeated seed in {seeds}")
    return replace(spec, seeds=list(seeds))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['train.steps=200']`` -> ``{'train.steps': 200}``; values are YAML scalars."""
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


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_format_value(v) for v in value)
    return str(value)


def _short_labels(keys: list[str]) -> dict[str, str]:
    """Axis labels for variant ids: the field name, or the dotted key where two sections share it."""
    names = [k.split(".")[1] for k in keys]
    return {k: (k.split(".")[1] if names.count(k.split(".")[1]) == 1 else k) for k in keys}


def variant_id(axes: dict[str, Any]) -> str:
    labels = _short_labels(list(axes))
    return ",".join(f"{labels[k]}={_format_value(v)}" for k, v in axes.items()) or "base"


def expand(spec: Spec, overrides: dict[str, Any] | None = None) -> list[Variant]:
    """All variants of a spec: grid x zip groups x seeds, minus excludes, with overrides applied."""
    overrides = overrides or {}
    axes: list[list[dict[str, Any]]] = []
    for key, values in spec.grid.items():
        if key not in overrides:
            axes.append([{key: v} for v in values])
    for group in spec.zip_groups:
        kept = {k: v for k, v in group.items() if k not in overrides}
        if kept:
            length = len(next(iter(kept.values())))
            axes.append([{k: vals[i] for k, vals in kept.items()} for i in range(length)])
    if spec.seeds and SEED_KEY not in overrides:
        axes.append([{SEED_KEY: s} for s in spec.seeds])

    variants: dict[str, Variant] = {}
    for combo in itertools.product(*axes):
        point: dict[str, Any] = {}
        for part in combo:
            point.update(part)
        if any(all(point.get(k, overrides.get(k)) == v for k, v in entry.items()) for entry in spec.exclude):
            continue
        vid = variant_id(point)
        assignments = {k: (v, f"{spec.path}: base") for k, v in spec.base.items()}
        assignments.update({k: (v, f"{spec.path}: variant {vid}") for k, v in point.items()})
        assignments.update({k: (v, "override") for k, v in overrides.items()})
        config = build_config(assignments)
        variants.setdefault(vid, Variant(vid, point, config))
    if not variants:
        raise SpecError(f"{spec.path}: every variant is excluded; nothing to run")
    return list(variants.values())


