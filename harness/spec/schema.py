"""The JSON Schema of a spec (``experiments/spec.schema.json``), for editors that complete and check keys."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from harness.spec.identity import _plain
from harness.spec.keys import (
    _NUMBER,
    AXIS_NAME_PATTERN,
    CHOICES,
    NAME_PATTERN,
    PRACTICAL_DIFFERENCE,
    REFERENCE_KEYS,
    REFERENCE_METRICS,
    SECTIONS,
    TUNE_EXTEND,
    TUNE_METRICS,
    TUNE_SEARCHES,
    TUNE_SECTIONS,
    _adapter,
    all_dotted_keys,
    config_field,
    default_of,
)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "experiments" / "spec.schema.json"


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
    meta = config_field(key).metadata
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
    numeric_range = {
        "type": "object",
        "additionalProperties": False,
        "required": ["low", "high"],
        "description": "search: tpe: a range to sample from",
        "properties": {
            "low": _yaml11_numbers({"type": "number"}),
            "high": _yaml11_numbers({"type": "number"}),
            "log": {"type": "boolean", "default": False},
        },
    }
    tunable = [k for k in keys if k.split(".")[0] in TUNE_SECTIONS and k != "train.seed"]
    tune = {
        "type": "object",
        "additionalProperties": False,
        "required": ["seeds"],
        "description": "each variant at its own best point: these keys tried on tuning seeds, the verdicts "
        "decided on the spec's own seeds (harness/tuning.py)",
        "properties": {
            **{k: {"anyOf": [axis_values[k], numeric_range]} for k in tunable},
            "seeds": {"type": "array", "minItems": 1, "items": {"type": "integer"}, "uniqueItems": True},
            "metric": {"enum": list(TUNE_METRICS), "default": "final_val_loss"},
            "extend": {"type": "integer", "minimum": 0, "maximum": 10, "default": TUNE_EXTEND},
            "search": {"enum": list(TUNE_SEARCHES), "default": "grid"},
            "trials": {"type": "integer", "minimum": 1, "maximum": 1000},
            "compare_untuned": {"type": "boolean", "default": False},
        },
    }
    named_axis = {
        "type": "object",
        "minProperties": 1,
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
            "name": {
                "type": "string",
                "pattern": f"^{NAME_PATTERN}$",
                "description": "MLflow experiment and results/<name>/ folder",
            },
            "description": {"type": "string"},
            "base": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    section: {
                        "type": "object",
                        "additionalProperties": False,
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
                    {
                        "type": "array",
                        "items": {"type": "object", "properties": axis_values, "additionalProperties": False},
                    },
                ],
            },
            "exclude": {
                "type": "array",
                "items": {"type": "object", "minProperties": 1},
                "description": "partial assignments (axis -> value or level name) to drop",
            },
            "seeds": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
            "practical_difference": {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "pattern": f"^{_NUMBER.pattern}$"},
                ],
                "default": PRACTICAL_DIFFERENCE,
                "description": "δ in nats: the smallest difference in loss that matters; the report's verdicts "
                "(better, worse, equivalent within ±δ, undecided) use it; not part of any run's identity",
            },
            "tune": tune,
            "references": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": list(REFERENCE_KEYS),
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
